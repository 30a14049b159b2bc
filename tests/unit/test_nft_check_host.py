"""NftBackend.check_host: asks nft until it could run once, then no more."""
from __future__ import annotations

import pytest

from plugin.enforce.backend import BackendError
from plugin.enforce.nftables import NftBackend
from plugin.enforce.nftables.runner import NftError


class Runner:
    """Answers ``list tables`` with the next of ``answers`` (an exception is raised)."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def list_json(self, *what, **_flags):
        self.calls.append(what)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_check_host_asks_until_nft_ran_once_then_no_more():
    runner = Runner(NftError("nft failed: Operation not supported"), OSError("no libnftables"), {"nftables": []})
    backend = NftBackend(runner=runner, netlink=False)
    for _ in range(2):
        with pytest.raises(BackendError, match="^nftables unavailable: "):
            backend.check_host()
    backend.check_host()
    backend.check_host()
    backend.check_host()
    assert runner.calls == [("tables",)] * 3
