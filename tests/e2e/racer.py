"""The fail-closed racer: probes a container that is about to start, from its own
network namespace as soon as Docker creates it, and from peers towards it; proves
that not one forbidden packet passes during a start."""
from __future__ import annotations

import json
import subprocess
import sys

PY = sys.executable
NETNS_DIR = "/var/run/docker/netns"   # where Docker creates its sandboxes' namespaces

RACER_SRC = r'''
import json, os, socket, sys, threading, time
from plugin.kernel.netns import enter   # secnet's own setns helper (the venv has secnet installed)
cfg = json.loads(sys.argv[1])
stop = threading.Event()
lock = threading.Lock()
hits = []          # (time, who, target) of every connection that got through
firsts = {}        # who/target -> first success time
attempts = {}
bound = {}         # who -> when its bind to the container's address first worked

def record(who, tgt, t, how="ok"):
    with lock:
        hits.append((t, who, tgt, how))
        firsts.setdefault(who + " " + tgt, t)

def count(who):
    with lock:
        attempts[who] = attempts.get(who, 0) + 1

def loop(who, path, bind, targets, tmo):
    # Docker creates the file first and bind-mounts the namespace on it a moment later:
    # until then setns fails, so try again until it works (or the file is gone).
    while True:
        try:
            enter(path)
            break
        except OSError:
            if stop.is_set() or not os.path.exists(path):
                return
            time.sleep(0.0005)
    while not stop.is_set():
        for addr, port in targets:
            s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(tmo)
            try:
                if bind:
                    try:
                        s.bind((bind, 0))
                    except OSError:
                        time.sleep(0.0005)   # not our container's netns, or not addressed yet
                        continue
                count(who)
                t = time.monotonic()
                if bind:
                    with lock:
                        bound.setdefault(who, t)
                s.connect((addr, port))
                record(who, f"{addr}:{port}", time.monotonic())
            except ConnectionRefusedError:
                record(who, f"{addr}:{port}", time.monotonic(), "refused")
            except socket.timeout:
                pass
            except OSError:
                if time.monotonic() - t < 0.001:
                    time.sleep(0.001)   # an instant error (no route, no neighbour): leave the CPU to dockerd
            finally:
                s.close()
        if not bind:
            count(who)

threads = []
def start(who, path, bind, targets):
    for target in targets:   # one thread per target: a dropped probe never delays another
        t = threading.Thread(target=loop, args=(who, path, bind, [target], cfg.get("timeout", 0.05)),
                             daemon=True)
        t.start()
        threads.append(t)

for peer in cfg.get("peers", []):   # from existing peers towards the new container
    start("peer:" + peer["name"], peer["netns"], None, [tuple(x) for x in peer["targets"]])
seen = set(os.listdir(cfg["netns_dir"]))
print("READY", flush=True)
watched = 0
def watch():
    global watched
    while not stop.is_set():
        try:
            now = set(os.listdir(cfg["netns_dir"]))
        except OSError:
            now = set()
        for name in sorted(now - seen):
            seen.add(name)
            watched += 1
            start("new:" + name, os.path.join(cfg["netns_dir"], name), cfg["bind"],
                  [tuple(x) for x in cfg["targets"]])
        time.sleep(0.001)
w = threading.Thread(target=watch, daemon=True)
w.start()
sys.stdin.readline()   # "stop", or EOF
stop.set()
for t in threads + [w]:
    t.join(2)
json.dump({"hits": hits, "firsts": firsts, "attempts": attempts, "bound": bound,
           "netns_seen": watched}, sys.stdout)
'''


class Racer:
    """Probes a container that is about to start, from its own netns (found as soon as
    Docker creates it under /var/run/docker/netns and bound to the container's fixed
    address, so no other netns sends anything) and from peers towards it."""

    def __init__(self, bind: str, targets: list, peers: list = (), timeout: float = 0.05):
        cfg = {"netns_dir": NETNS_DIR, "bind": bind, "targets": targets, "timeout": timeout,
               "peers": [{"name": c.name, "netns": c.sandbox, "targets": t} for c, t in peers]}
        self.proc = subprocess.Popen([PY, "-c", RACER_SRC, json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            err = self.finish()
            raise AssertionError(f"racer did not start: {err}")

    def finish(self) -> dict:
        try:
            out, err = self.proc.communicate("stop\n", timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            raise AssertionError("racer did not stop")
        try:
            return json.loads(out)
        except ValueError:
            return {"error": err}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
