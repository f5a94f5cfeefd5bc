"""`roadside gateway dead-letters list|replay|drop` against a real queue and receiver."""

from __future__ import annotations

import subprocess
import sys

from roadside.gateway.protocol import Record
from roadside.gateway.queue import Queue
from roadside.tools.sim.receiver_store import read_seqs


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "roadside.tools.cli", "gateway",
                           "dead-letters", *args], capture_output=True, text=True, timeout=30)


def test_list_replay_drop(tmp_path, start_receiver):
    receiver = start_receiver()
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[gateway]\nid = "gw-d"\nsite = "s"\ndata_dir = "data"\n'
                   f'[[uplink]]\ntype = "http"\nurl = "{receiver.batches_url}"\n')
    (tmp_path / "data").mkdir()
    q = Queue(tmp_path / "data" / "queue.sqlite", "gw-d", "s")
    ids = []
    for start in (1, 4):
        q.store("wl-1", "water", [Record(s, 1_700_000_000 + s, 1, 0, {1: 1.0})
                                  for s in range(start, start + 3)], start)
        b = q.next_batch(10, 1 << 20)
        q.dead_letter(b.id, "http", "HTTP 400: records[0]: bad", ["http"])
        ids.append(b.id)
    q.close()

    out = cli("list", "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ids
    assert "uplink=http" in lines[0] and "reason=HTTP 400: records[0]: bad" in lines[0]

    out = cli("replay", "--config", str(cfg))
    assert out.returncode != 0 and "give the batch ID" in out.stderr
    out = cli("replay", "no-such-id", "--config", str(cfg))
    assert out.returncode != 0 and "dead letter 'no-such-id' not found" in out.stderr

    out = cli("replay", "--config", str(cfg), ids[0])   # the form the help shows
    assert out.returncode == 0, out.stderr
    assert "delivered; removed from the dead letters" in out.stdout
    assert read_seqs(receiver.db) == {"wl-1": [1, 2, 3]}

    out = cli("--config", str(cfg), "drop", ids[1])    # --config before the operation too
    assert out.returncode == 0 and f"{ids[1]}: dropped" in out.stdout
    assert cli("list", "--config", str(cfg)).stdout.strip() == "no dead letters"
