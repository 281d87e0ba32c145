import pytest

from tests.data.curation.helpers import FakeLLMServer


@pytest.fixture(scope="module")
def llm_server():
    with FakeLLMServer() as server:
        yield server
