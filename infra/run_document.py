"""The project's SSM Command document: the one document the controller may send to the nodes.

Instead of ``AWS-RunShellScript`` (any command lines, on any instance the policy reaches) the
controller sends ``<cluster>-run-script`` with two typed parameters: ``script``, the launch script
**base64-encoded** (``allowedPattern`` admits only the base64 alphabet, so nothing in it is ever
parsed by the shell that SSM interpolates it into), and ``executionTimeout`` (digits only). The
document writes the decoded script to a temporary file and runs it with bash, stdin closed
(``AWS-RunShellScript`` would run the lines with ``sh``, and a script fed on stdin could be
eaten by a child reading stdin). The controller's role may not create or change documents, so
this wrapper is fixed by ``pulumi up``.

What this does not do: restrict *what* the script does — the controller generates it
(``trainer.launch.node_script``) and runs the same reviewed code as the nodes.
"""

from __future__ import annotations

from typing import Any

#: SSM's own ceiling for a command (48 h); the watcher relaunches a longer run, which resumes.
MAX_EXECUTION_TIMEOUT_S = 172800
BASE64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"

#: The shell lines the document runs; ``{{ script }}`` is base64 only (see the pattern).
RUN_COMMAND = (
    "f=$(mktemp /tmp/twostage-XXXXXX.sh)",
    "printf '%s' '{{ script }}' | base64 -d > \"$f\"",
    'bash "$f" </dev/null; rc=$?',
    'rm -f "$f"',
    'exit "$rc"',
)


def run_document() -> dict[str, Any]:
    """The document content (schema 2.2, ``aws:runShellScript`` on Linux)."""
    return {
        "schemaVersion": "2.2",
        "description": "twostage: run one base64-encoded launch script with bash (stdin closed)",
        "parameters": {
            "script": {
                "type": "String",
                "description": "The launch script, base64-encoded",
                "allowedPattern": BASE64_PATTERN,
            },
            "executionTimeout": {
                "type": "String",
                "default": str(MAX_EXECUTION_TIMEOUT_S),
                "description": "Seconds before SSM stops the command (at most 48 h)",
                "allowedPattern": "^[0-9]{1,6}$",
            },
        },
        "mainSteps": [
            {
                "action": "aws:runShellScript",
                "name": "runScript",
                "precondition": {"StringEquals": ["platformType", "Linux"]},
                "inputs": {
                    "timeoutSeconds": "{{ executionTimeout }}",
                    "runCommand": list(RUN_COMMAND),
                },
            }
        ],
    }
