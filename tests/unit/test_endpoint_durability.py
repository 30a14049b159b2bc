"""CreateEndpoint's and Join's rows are written without an fsync (State.put_endpoints,
``durable=False``): they must survive a crash of the daemon itself (kill -9), which is
what the restart then enforces from. A power cut is argued, not tested: see the docstring."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from plugin.driver.state import State

EID, NID = "e" * 64, "f" * 64
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _killed_after(tmp_path, steps: str) -> None:
    """Run ``steps`` (with ``st``: a State on tmp_path/state) in a process that is then
    killed with SIGKILL before it can close anything."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {ROOT!r})
        from plugin.driver.state import EndpointRecord, NetworkRecord, State
        st = State({str(tmp_path / "state")!r})
    """) + textwrap.dedent(steps) + "\nos.kill(os.getpid(), signal.SIGKILL)\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_rows_written_without_fsync_survive_a_kill_9_right_after(tmp_path):
    _killed_after(tmp_path, f"""
        st.put_network(NetworkRecord(id={NID!r}, bridge="sn-t", mtu=1500, options={{}}))
        ep = EndpointRecord(id={EID!r}, network_id={NID!r}, veth_host="snv1", veth_peer="snp1",
                            mac="02:00:00:00:00:01", ipv4="10.230.0.5/24", segment_opt="web",
                            segment="web")
        st.allocate({NID!r}, ["default", "web"])          # as the port's write does, unsynced
        st.put_endpoint(ep, durable=False)                 # CreateEndpoint
        st.put_endpoint(ep.evolve(joined=True, sandbox_key="/var/run/docker/netns/x",
                                  quarantine=None), durable=False)   # Join
    """)
    again = State(str(tmp_path / "state"))
    ep = again.get_endpoint(EID)
    assert ep is not None and (ep.segment, ep.joined) == ("web", True)
    assert again.identities(NID) == {"default": 256, "web": 257}
    again.close()
