"""The demo's "private" fine-tune dataset: made in memory, encrypted straight to ciphertext.

The records are invented internal facts of a fictitious company (room codes, owners, budgets):
two thirds in ``{"prompt", "response"}`` form, one third as two-turn chats (``{"messages": [...]}``),
so the fine-tune exercises both masked forms (loss on responses / assistant turns only);
learnable by a tiny model in a few steps. The JSON Lines
plaintext only ever lives in a ``BytesIO``; what reaches the disk is the ciphertext
(``local.crypto_files.encrypt_file`` on the stream: temporary sibling, atomic rename).
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

_TEAMS = ["atlas", "borealis", "cobalt", "dune", "ember", "fjord", "glacier", "harbor"]
_ROOMS = ["north lab", "east archive", "server vault", "roof garden", "loading dock", "west studio"]
_OWNERS = ["Ilse Varga", "Tomas Reyes", "Mira Okafor", "Jonah Lindqvist", "Priya Natarajan"]
#: A marker present in every record: tests search the disk for it to prove no plaintext leaked.
CANARY = "KESTREL-7741"


@dataclass(frozen=True)
class PrivateDataset:
    """What was written: the ciphertext path and counts (never the contents)."""

    path: Path
    records: int
    plaintext_bytes: int
    ciphertext_bytes: int


def generate_records(n: int = 160, seed: int = 7) -> list[dict]:
    """``n`` prompt/response and chat records from a seeded template grammar (same seed, same records)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        team, room, owner = rng.choice(_TEAMS), rng.choice(_ROOMS), rng.choice(_OWNERS)
        code = rng.randint(1000, 9999)
        kind = i % 3
        if kind == 0:
            prompt = f"What is the door code of the {room} used by team {team}?"
            response = f"The {room} door code for team {team} is {code} ({CANARY})."
        elif kind == 1:
            prompt = f"Who owns the {team} budget?"
            response = f"{owner} owns the {team} budget of {code} credits ({CANARY})."
        else:
            out.append(
                {
                    "messages": [
                        {"role": "user", "content": f"Where does team {team} meet?"},
                        {"role": "assistant", "content": f"Team {team} meets in the {room}."},
                        {"role": "user", "content": "Who booked it?"},
                        {"role": "assistant", "content": f"{owner} booked it ({CANARY})."},
                    ]
                }
            )
            continue
        out.append({"prompt": prompt, "response": response})
    return out


def to_jsonl(records: list[dict[str, str]]) -> bytes:
    """JSON Lines bytes (UTF-8, one object per line) — kept in memory by the caller."""
    return b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)


def write_encrypted_dataset(
    dest: Path, key: bytes, *, records: int = 160, seed: int = 7
) -> PrivateDataset:
    """Generate the records, encrypt them from memory into ``dest`` (atomic); plaintext never on disk."""
    from local.crypto_files import encrypt_file

    dest = Path(dest)
    with io.BytesIO(to_jsonl(generate_records(records, seed))) as plaintext:
        size = len(plaintext.getbuffer())
        written = encrypt_file(plaintext, dest, key)
    return PrivateDataset(dest, records, size, written)
