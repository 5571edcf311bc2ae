"""What is waited out rather than final: a JetStream leader election, a Docker Engine that is restarting."""

from __future__ import annotations

import aiodocker
import pytest

from agent.docker import _translate
from agent.errors import AgentError, Unavailable

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("message", [
    "create pgdata: database not open",
    "get keep: database not open",
    "error while mounting volume '/var/lib/docker/volumes/keep/_data': get keep: database not open",
    "transport is closing: unavailable",
    "failed to update store for object type *libnetwork.endpoint: open : no such file or directory",
    'connection error: desc = "transport: Error while dialing dial unix /run/containerd.sock": unavailable',
])
def test_the_engines_answers_while_it_restarts_are_unavailable(message: str) -> None:
    err = _translate(aiodocker.DockerError(500, message), "volume 'pgdata'")
    assert type(err) is Unavailable and "not ready" in err.message and message in err.message


@pytest.mark.parametrize("message", [
    "error evaluating symlinks from mount source \"/srv/x\": lstat /srv/x: no such file or directory",
    "create pgdata: VolumeDriver.Create: plugin failed",
    "unavailable",
])
def test_other_500s_stay_internal(message: str) -> None:
    err = _translate(aiodocker.DockerError(500, message), "volume 'pgdata'")
    assert type(err) is AgentError and err.code == "internal"
