"""Shapes of the demo's objects: a polygon of about a given area, drawn at 1/16-pixel precision
into a tight mask that is one 8-connected component (one instance in a label map)."""
import math

import cv2
import numpy as np


def outline(kind, area, angle):
    """Polygon (N×2 float, centred at 0) of a shape of about ``area`` px; a ring is its
    outer outline with an inner one to cut out."""
    if kind in ("apple", "lime", "hive", "kennel"):
        return _ellipse(math.sqrt(area / math.pi), 1.0, angle), None
    if kind in ("boat", "car"):
        return _ellipse(math.sqrt(area * 2 / math.pi), 0.5, angle), None
    if kind == "ring":
        outer = math.sqrt(area / (math.pi * (1 - 0.55 ** 2)))
        return _ellipse(outer, 1.0, angle), _ellipse(0.55 * outer, 1.0, angle)
    if kind == "tile":
        side = math.sqrt(area)
        return _rotate([(-1, -1), (1, -1), (1, 1), (-1, 1)], side / 2, side / 2, angle), None
    if kind == "brick":
        long_side = math.sqrt(2 * area)
        return _rotate([(-1, -1), (1, -1), (1, 1), (-1, 1)], long_side / 2, long_side / 4,
                       angle), None
    side = math.sqrt(4 * area / math.sqrt(3))  # sail: equilateral triangle
    corners = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    return _rotate(corners, side / math.sqrt(3), side / math.sqrt(3), angle), None


def _ellipse(radius, ratio, angle, points=48):
    t = np.linspace(0, 2 * math.pi, points, endpoint=False)
    return _rotate(np.stack([np.cos(t), np.sin(t)], 1), radius, radius * ratio, angle)


def _rotate(unit_points, half_w, half_h, angle):
    points = np.asarray(unit_points, np.float64) * (half_w, half_h)
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _fixed_point(points, offset):
    """Polygon for cv2.fillPoly with shift=4: 1/16-pixel precision keeps small shapes true."""
    return np.round((points + offset) * 16).astype(np.int32)[None]


def shape_mask(kind, area, rng, pad):
    """Tight bool mask of one shape (one 8-connected component), padded by ``pad``."""
    outer, inner = outline(kind, area, rng.uniform(0, 2 * math.pi))
    offset = np.ceil(np.abs(outer).max()) + pad + 1
    size = int(2 * offset) + 1
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, _fixed_point(outer, offset), 1, cv2.LINE_8, shift=4)
    if inner is not None:
        cv2.fillPoly(canvas, _fixed_point(inner, offset), 0, cv2.LINE_8, shift=4)
    if cv2.connectedComponents(canvas, connectivity=8)[0] != 2:
        return None  # empty or broken (a tiny ring): not one instance
    x, y, w, h = cv2.boundingRect(canvas)
    return np.pad(canvas[y:y + h, x:x + w].astype(bool), pad)
