"""The fail-closed racer: probes a container that is about to start, from its own
network namespace as soon as Docker creates it, and from peers towards it; proves
that not one forbidden packet passes during a start."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

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
passed = set()     # (who, target) that connected ("ok") at least once
attempts = {}
bound = {}         # who -> when its bind to the container's address first worked

def record(who, tgt, t, how="ok"):
    with lock:
        hits.append((t, who, tgt, how))
        firsts.setdefault(who + " " + tgt, t)
        if how == "ok" and (who, tgt) not in passed:   # streamed: the test may end its
            passed.add((who, tgt))                      # window once its allowed ones passed
            sys.stdout.write("FIRST " + json.dumps([who, tgt, t]) + "\n")   # (lock held)
            sys.stdout.flush()

def say(text):
    # one write per line, under the lock: print() writes the end separately, and a thread's
    # line could land inside another's (FIRST lines come from the probing threads)
    with lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

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
say("READY")
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
for line in sys.stdin:   # "mark": stream first passes anew from here; "stop" (or EOF): stop
    if line.strip() != "mark":
        break
    with lock:
        passed.clear()
        sys.stdout.write("MARKED\n")
        sys.stdout.flush()
stop.set()
for t in threads + [w]:
    t.join(2)
with lock:
    doc = json.dumps({"hits": hits, "firsts": firsts, "attempts": attempts, "bound": bound,
                      "netns_seen": watched})
say("RESULT " + doc)
'''


class Racer:
    """Probes a container that is about to start, from its own netns (found as soon as
    Docker creates it under /var/run/docker/netns and bound to the container's fixed
    address, so no other netns sends anything) and from peers towards it.

    While it runs, the first connection that got through per (who, target) is streamed
    (``firsts``, ``wait_first``): a test can end its window once its positive controls
    passed instead of sleeping a fixed time."""

    def __init__(self, bind: str, targets: list, peers: list = (), timeout: float = 0.05):
        cfg = {"netns_dir": NETNS_DIR, "bind": bind, "targets": targets, "timeout": timeout,
               "peers": [{"name": c.name, "netns": c.sandbox, "targets": t} for c, t in peers]}
        self.proc = subprocess.Popen([PY, "-c", RACER_SRC, json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.firsts: list = []          # [who, target, monotonic time] of each first pass
        self._result = None
        self._marked = False
        self._seen = threading.Condition()
        while True:   # peers may pass before READY: their FIRST lines come first
            line = self.proc.stdout.readline()
            if not line.startswith("FIRST "):
                break
            self._take(line)
        if line.strip() != "READY":
            err = self.finish()
            raise AssertionError(f"racer did not start: {err}")
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _take(self, line: str) -> None:
        kind, _, doc = line.partition(" ")
        with self._seen:
            if kind == "FIRST":
                self.firsts.append(json.loads(doc))
            elif kind.strip() == "MARKED":
                self.firsts = []
                self._marked = True
            elif kind == "RESULT":
                self._result = json.loads(doc)
            self._seen.notify_all()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._take(line)

    def mark(self) -> None:
        """From here on, ``firsts`` holds only passes after this call (e.g. once the
        container that had the address before is gone). Returns, once the racer took it,
        the time.monotonic() before which passes do not count."""
        with self._seen:
            self._marked = False
        before = time.monotonic()
        self.proc.stdin.write("mark\n")
        self.proc.stdin.flush()
        with self._seen:
            while not self._marked:
                if not self._seen.wait(10):
                    raise AssertionError("racer did not take the mark")
        return before

    def wait_first(self, predicate, until: float) -> bool:
        """Wait until ``predicate(firsts)`` holds or time.monotonic() reaches ``until``;
        returns whether it held."""
        with self._seen:
            while not predicate(self.firsts):
                left = until - time.monotonic()
                if left <= 0:
                    return False
                self._seen.wait(left)
            return True

    def finish(self) -> dict:
        """Stop probing; returns {"hits": [(time, who, target, how)], "firsts", "attempts",
        "bound", "netns_seen"}, or {"error": stderr} when the racer gave no result."""
        try:
            self.proc.stdin.write("stop\n")
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("racer did not stop")
        reader = getattr(self, "_reader", None)
        if reader is not None:
            reader.join(5)
        else:   # it never said READY: whatever it printed is the reason
            self.proc.stdout.read()
        err = self.proc.stderr.read()
        return self._result if self._result is not None else {"error": err}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
