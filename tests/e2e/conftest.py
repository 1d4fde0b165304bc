import pytest

from stack import Stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One stack per test module, with the demo policy."""
    s = Stack(tmp_path_factory.mktemp("stack"))
    yield s
    s.stop()
