"""Folding stack traces for the job page: which frames fold, what stays verbatim."""

from __future__ import annotations

from pgjobs.web.dashboard.stacks import Part, split_stack

SITE = "/usr/lib/python3/site-packages/pgjobs"
LIB = "/usr/lib/python3.12"
TRACE = f"""Traceback (most recent call last):
  File "{SITE}/engine/executor.py", line 88, in run
    result = await handler(ctx, payload)
             ^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "{LIB}/asyncio/tasks.py", line 520, in wait_for
    return await fut
  File "/srv/app/jobs.py", line 14, in send_invoice
    render(invoice)
  File "/srv/app/render.py", line 3, in render
    raise KeyError("total")
KeyError: 'total'"""


def test_internal_frames_fold_and_user_frames_stay() -> None:
    parts = split_stack(TRACE)
    assert [p.folded for p in parts] == [False, True, False]
    header, internal, user = parts
    assert header.text == "Traceback (most recent call last):"
    assert internal.label == "2 pgjobs and asyncio/threading frames"
    assert internal.text.count('  File "') == 2 and "^^^" in internal.text
    assert user.text.startswith('  File "/srv/app/jobs.py"')
    assert user.text.endswith("KeyError: 'total'")
    assert "\n".join(p.text for p in parts) == TRACE


def test_one_pgjobs_frame_is_one_frame() -> None:
    trace = TRACE.replace(f'  File "{LIB}/asyncio/tasks.py", line 520, in wait_for\n', "")
    trace = trace.replace("    return await fut\n", "")
    assert [p.label for p in split_stack(trace) if p.folded] == ["1 pgjobs frame"]


def test_the_innermost_frame_never_folds() -> None:
    trace = (
        "Traceback (most recent call last):\n"
        f'  File "{SITE}/engine/worker.py", line 10, in loop\n'
        "    await self.run(job)\n"
        f'  File "{SITE}/engine/executor.py", line 20, in run\n'
        "    raise NoHandler(job.type)\n"
        "pgjobs.errors.NoHandler: no handler registered for job type 'x'"
    )
    parts = split_stack(trace)
    assert [p.folded for p in parts] == [False, True, False]
    assert parts[2].text.startswith(f'  File "{SITE}/engine/executor.py"')


def test_chained_exceptions_keep_their_headers_in_order() -> None:
    cause = TRACE.replace("KeyError: 'total'", "KeyError: 'total'")
    chained = (
        cause
        + "\n\nThe above exception was the direct cause of the following exception:\n\n"
        + TRACE.replace("KeyError: 'total'", "RuntimeError: invoice failed")
    )
    parts = split_stack(chained)
    assert sum(p.folded for p in parts) == 2
    assert "\n".join(p.text for p in parts) == chained
    shown = "\n".join(p.text for p in parts if not p.folded)
    assert "The above exception was the direct cause" in shown
    assert shown.endswith("RuntimeError: invoice failed")


def test_a_trace_cut_at_its_start_still_folds() -> None:
    cut = TRACE[TRACE.index("^^^") :]  # stored traces keep their last characters
    parts = split_stack(cut)
    assert "\n".join(p.text for p in parts) == cut
    assert [p.label for p in parts if p.folded] == ["1 asyncio/threading frame"]


def test_unknown_formats_are_shown_verbatim() -> None:
    node = (
        "Error: connect ECONNREFUSED 127.0.0.1:5432\n"
        "    at TCPConnectWrap.afterConnect [as oncomplete] (node:net:1555:16)"
    )
    group = (
        "  + Exception Group Traceback (most recent call last):\n"
        f'  |   File "{SITE}/engine/executor.py", line 88, in run\n'
        "  | ExceptionGroup: two (2 sub-exceptions)"
    )
    user_only = 'Traceback (most recent call last):\n  File "/srv/a.py", line 1, in f\nE: x'
    for text in (node, group, user_only, "", "just a message"):
        assert split_stack(text) == ((Part(text),) if text else ())
    assert split_stack(None) == ()
