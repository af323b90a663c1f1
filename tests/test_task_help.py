"""`invoke --help TASK` is the documentation of every flag: each renders with real, distinct flags.

invoke picks a task's short flags from the letters of each name in turn; when every letter
before a dash is taken it picked the dash itself, and `invoke --help finetune` showed
`--=STRING, --max-exposure=STRING` (a flag nobody can type).
"""

from __future__ import annotations

import re

import pytest
from invoke import Program

import tasks

TASK_NAMES = sorted(tasks.ns.task_names)


def render_help(name: str, capsys: pytest.CaptureFixture[str]) -> str:
    Program(namespace=tasks.ns, name="twostage", binary="invoke").run(
        ["invoke", "--help", name], exit=False
    )
    return capsys.readouterr().out


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_flag_of_every_task_is_real_and_unique(name: str, capsys) -> None:
    text = render_help(name, capsys)
    assert "Options:" in text or "none" in text.lower(), text
    flags: list[str] = []
    for line in text.split("Options:", 1)[-1].splitlines():
        head = line.strip().split("  ", 1)[0]  # "-m STRING, --model=STRING"
        if not head.startswith("-"):
            continue
        for part in head.split(", "):
            flag = re.split(r"[ =\[]", part.replace("[no-]", ""), maxsplit=1)[0]
            assert flag not in ("-", "--"), f"invoke --help {name}: empty flag in {line.strip()!r}"
            assert re.fullmatch(r"-[A-Za-z0-9]|--[a-z0-9][a-z0-9-]*", flag), (name, line)
            flags.append(flag)
    takes_none = text.split("Options:", 1)[-1].strip().lower() == "none"
    assert flags or (takes_none and not tasks.ns[name].get_arguments()), (
        f"invoke --help {name} lists no options"
    )
    duplicated = sorted({f for f in flags if flags.count(f) > 1})
    assert not duplicated, f"invoke --help {name}: {duplicated} listed twice"
    # The parser agrees with what is shown.
    for arg in tasks.ns[name].get_arguments():
        assert all(n and n != "-" for n in arg.names), (name, arg.names)


def test_finetune_help_names_every_record_form(capsys) -> None:
    text = render_help("finetune", capsys)
    assert "--max-exposure=STRING" in text
    for form in ("text", "prompt", "response", "messages"):
        assert f'"{form}"' in text, f"invoke --help finetune does not name the {form!r} form"
