"""The install smoke, run by a fresh venv's python (tests/test_install.py): the syn_mp installed in that
venv (never the checkout's) starts its manager, a bytes subclass goes through the codec, a multi_call
times out, a child process registers a name and dies and the manager purges the name, and
`syn-mp status` from the venv's bin/ answers. Prints one line, "smoke ok ...".

Usage: python smoke_install.py RUNTIME_DIR
"""
from __future__ import annotations

import os
import subprocess
import sys
import time


def wait_for(pred, what: str, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise SystemExit(f"smoke FAILED: timed out waiting for {what}")
        time.sleep(0.01)


def main() -> None:
    rdir = sys.argv[1]
    os.environ.update(SYN_MP_RUNTIME_DIR=rdir, SYN_MP_NODE="smoke")
    import syn_mp
    here = os.path.realpath(sys.prefix)
    if not os.path.realpath(syn_mp.__file__).startswith(here + os.sep):
        raise SystemExit(f"smoke FAILED: syn_mp comes from {syn_mp.__file__}, not from the venv {here}")
    syn_mp.add_node_to_scopes(["smoke"])  # starts the manager
    try:
        class Raw(bytes):  # a subclass counts as its base type (the codec's exact-type path)
            pass
        syn_mp.register("smoke", Raw(b"raw"), meta=(Raw(b"\x00"), 1.5))
        assert syn_mp.lookup("smoke", b"raw") == (syn_mp.Pid("smoke", os.getpid()), (b"\x00", 1.5))
        syn_mp.join("smoke", "quiet")  # a member that never answers: multi_call's wait times out
        replies, bad = syn_mp.multi_call("smoke", "quiet", "ping", timeout=0.2)
        assert replies == [] and bad == [(syn_mp.Pid("smoke", os.getpid()), None)], (replies, bad)
        child = subprocess.Popen([sys.executable, "-c", (
            "import sys, syn_mp\n"
            "syn_mp.add_node_to_scopes(['smoke'])\n"
            "syn_mp.register('smoke', 'worker', meta={'n': 1})\n"
            "print('registered', flush=True)\n"
            "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert child.stdout is not None and child.stdout.readline() == "registered\n", "the child did not register"
            found = syn_mp.lookup("smoke", "worker")
            assert found is not None and found[0].pid == child.pid and found[1] == {"n": 1}, found
            child.kill()
            child.wait()
            wait_for(lambda: syn_mp.lookup("smoke", "worker") is None, "the dead child's name to be purged")
            cli = os.path.join(os.path.dirname(sys.executable), "syn-mp")
            st = subprocess.run([cli, "status", "--runtime-dir", rdir], capture_output=True, text=True, timeout=30)
            assert st.returncode == 0 and "health    ok" in st.stdout, (st.returncode, st.stdout, st.stderr)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    finally:  # the manager goes, whatever failed
        subprocess.run([os.path.join(os.path.dirname(sys.executable), "syn-mp"), "stop", "--runtime-dir", rdir],
                       capture_output=True, timeout=30)
    v = sys.version_info
    print(f"smoke ok: Python {v.major}.{v.minor}.{v.micro}, syn_mp {syn_mp.__version__} from {syn_mp.__file__}")


if __name__ == "__main__":
    main()
