"""Ctrl-C always ends a sweep with 130, even when unwinding through Tune and Ray hangs."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

STUCK_AFTER_INTERRUPT = textwrap.dedent(
    """
    import sys, time
    import harness.sweep.runner as runner

    runner.INTERRUPT_GRACE_S = 1.0
    said = runner.run_once(lambda: print("named the unfinished cells", flush=True))
    with runner.exit_if_stuck_after_interrupt(said):
        try:
            print("running", flush=True)  # inside the try: the test interrupts as soon as it reads this
            time.sleep(60)
        except KeyboardInterrupt:
            time.sleep(60)  # a cleanup that never returns
    sys.exit(0)
    """
)


def test_a_sweep_whose_unwinding_hangs_after_ctrl_c_still_exits_130_once_it_has_said_so():
    process = subprocess.Popen([sys.executable, "-c", STUCK_AFTER_INTERRUPT], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "running"
        process.send_signal(signal.SIGINT)
        returncode = process.wait(timeout=50)
        output = process.stdout.read()
    finally:
        process.kill()
    assert returncode == 130
    assert output.count("named the unfinished cells") == 1


def test_run_once_runs_its_action_a_single_time():
    from harness.sweep.runner import run_once

    calls = []
    once = run_once(lambda: calls.append(1))
    once()
    once()
    assert calls == [1]
