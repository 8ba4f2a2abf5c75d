import pytest
from docker_support import complete_once


@pytest.fixture(scope="session")
def served_request(server):
    """The shared test server after one base-model completion, so request metrics carry samples."""
    complete_once(server.base_url)
    return server
