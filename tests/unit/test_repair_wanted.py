"""plugin.daemon.wiring.repair_wanted: which nft notifications start a repair check."""
from plugin.daemon.wiring import repair_wanted
from plugin.kernel.nftevents import RESYNC, NftEvent


class Owner:
    def __init__(self, prefix):
        self.prefix = prefix

    def owns(self, event):
        return "net" if event.table.startswith(self.prefix) else None


def test_an_owned_table_and_every_resync_start_a_check():
    wanted = repair_wanted([Owner("secnet_")])
    assert wanted(NftEvent("delete", "table", "inet", "secnet_abc"))
    assert not wanted(NftEvent("add", "table", "inet", "filter"))
    assert wanted(RESYNC)            # notifications were lost: anything may have changed


def test_without_owners_only_resync():
    wanted = repair_wanted([])
    assert not wanted(NftEvent("delete", "table", "inet", "secnet_abc"))
    assert wanted(RESYNC)
