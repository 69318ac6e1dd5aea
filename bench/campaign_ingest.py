"""Campaign creation at scale: a CSV of N recipients (default 1,000,000) through ``sendq campaign create``.

Measures, for the ``sendq campaign create`` process: the seconds until it returns (every recipient stored, so
every message is expandable) and its peak RSS. Sending may start as soon as the first batch (5,000 rows) is
stored. Goals (issue 8): <= 60 s and <= 200 MB for 1,000,000 recipients. The campaign starts an hour
later, so nothing is sent meanwhile; it is cancelled at the end.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/0 \\
        python bench/campaign_ingest.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import environment, fresh_settings

SENDERS = [f"+1312555{n:04d}" for n in range(1000, 1050)]


def write_csv(path: Path, rows: int) -> None:
    """``phone,first_name,code``; one row in 100 is bad (no first name) and one in 200 repeats a phone."""
    with path.open("w") as out:
        out.write("phone,first_name,code\n")
        for i in range(rows):
            phone = f"+1415{(i - 1 if i % 200 == 199 else i):07d}"
            name = "" if i % 100 == 50 else f"Name{i}"
            out.write(f"{phone},{name},{i:06d}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = fresh_settings(tmp)
        csv_path = Path(tmp) / "recipients.csv"
        t = time.monotonic()
        write_csv(csv_path, args.rows)
        print(f"wrote {args.rows:,} rows ({csv_path.stat().st_size / 1e6:.0f} MB) in {time.monotonic() - t:.1f} s")
        send_at = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        command = [sys.executable, "-m", "producers.cli", "campaign", "create", "--csv", str(csv_path),
                   "--template", "Hi {first_name}, your code is {code}", "--send-at", send_at, "--json"]
        for sender in SENDERS:
            command += ["--from", sender]
        t = time.monotonic()
        done = subprocess.run(command, env=environment(settings), capture_output=True, text=True)
        seconds = time.monotonic() - t
        if done.returncode != 0:
            raise SystemExit(done.stderr)
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        result = json.loads(done.stdout)
        backend = settings.database_url.split(":", 1)[0]
        print(f"backend {backend}: create returned after {seconds:.1f} s "
              f"({result['rows_read'] / seconds:,.0f} rows/s), peak RSS {peak_mb:.0f} MB")
        print(f"rows {result['rows_read']:,}: {result['recipients']:,} recipients, {result['rows_invalid']:,} invalid, "
              f"{result['duplicates']:,} duplicates")
        subprocess.run([sys.executable, "-m", "producers.cli", "campaign", "cancel", result["id"]],
                       env=environment(settings), capture_output=True, check=True)
        print(f"goals: <= 60 s {'met' if seconds <= 60 else 'NOT met'}, "
              f"<= 200 MB {'met' if peak_mb <= 200 else 'NOT met'}")


if __name__ == "__main__":
    main()
