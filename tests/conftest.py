"""Fixtures shared by the test modules: demo datasets made once per session."""
import pytest

from roilib.demo import make_demo


@pytest.fixture(scope="session")
def make_demo_data(tmp_path_factory):
    """make(seed, n_train, n_val) -> the root of a demo dataset, each made once a session."""
    made = {}

    def make(seed, n_train, n_val):
        key = (seed, n_train, n_val)
        if key not in made:
            made[key] = tmp_path_factory.mktemp(f"demo{seed}_{n_train}_{n_val}") / "demo"
            make_demo(made[key], seed=seed, n_train=n_train, n_val=n_val)
        return made[key]
    return make


@pytest.fixture(scope="session")
def data(make_demo_data):
    """The small demo of the script-level tests (24 training and 6 validation images)."""
    return make_demo_data(3, 24, 6)


@pytest.fixture(scope="session")
def example_checkpoint(tmp_path_factory):
    """A ResNet-18 checkpoint that knows Test/example.png's four masks (helpers.train_on_example)."""
    from helpers import train_on_example
    return train_on_example(tmp_path_factory.mktemp("example_model") / "example.pt")
