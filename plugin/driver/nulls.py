"""Stand-ins the Driver uses when it is given no reconciler or no resolver (tests of the verbs)."""


class NullReconciler:
    """Policy writer used when none is configured (unit tests of the verbs)."""

    def check_backend(self, name):
        pass

    def link_first(self, net):
        return False

    def brings_segment(self, net, ep):
        return False

    def bridge_options(self, net):
        return ()

    def network_added(self, net, endpoints=(), bridge_made=False):
        pass

    def network_removed(self, net):
        pass

    def endpoint_changed(self, net, ep, grouped=False):
        pass

    def endpoint_removed(self, net, ep):
        pass

    def policy_changed(self, net, edit=None):
        pass


class NullResolver:
    """Segment resolver used when no Docker watcher runs: the default segment."""

    def resolve_at_join(self, net, ep):
        return ep

    def expect(self, net, ep):
        pass

    def forget(self, ep):
        pass
