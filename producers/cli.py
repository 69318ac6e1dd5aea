"""The ``sendq`` console script.

Every command reads the settings here, at the edge, and passes them down: a one-shot command builds its clients
here, a long-running process is built from them in :mod:`worker.processes`. With ``--json``
stdout carries exactly one JSON object. Errors go to stderr as one line; the exit code is 2 for bad
input, 1 for any other failure, 0 for success.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from producers.output import emit
from worker.errors import NotFoundError, SendqError, ValidationError

EXIT_OK, EXIT_FAILURE, EXIT_BAD_INPUT = 0, 1, 2
DEFAULT_WEB_PORT = 8080
DEFAULT_SIMULATOR_PORT = 8090


def _settings() -> Any:
    from worker.settings import Settings

    return Settings.from_env()


# -- producer commands --------------------------------------------------------------------------------

def cmd_send(args: argparse.Namespace) -> int:
    from producers import Producer
    from producers.producer import check_send

    settings = _settings()
    recipients = args.to.split(",") if "," in args.to else args.to
    options: dict[str, Any] = {
        "text": args.text, "media_urls": args.media or (), "from_": args.from_, "profile": args.profile,
        "kind": args.kind, "priority": args.priority, "idempotency_key": args.idempotency_key,
        "send_at": args.send_at, "valid_for": args.valid_for, "schedule_mode": args.schedule_mode,
    }
    # Refused here, before connecting: a bad send must not start the embedded Redis nor create ./sendq.db.
    check_send(settings, recipients, **options)
    with Producer.connect(settings) as producer:
        result = producer.submit(recipients, **options)
    emit(args, {"id": result["id"], "status": result["status"]}, f"{result['id']} {result['status']}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from producers import Producer, bulk_cli

    with Producer.connect(_settings()) as producer:
        try:
            record = producer.status(args.id)
        except NotFoundError:  # not a message: a bulk update, or NotFoundError again
            record = producer.bulk_status(args.id)
    text = bulk_cli.format_record(record) if record.get("record_type") == "bulk_update" else _format_record(record)
    emit(args, record, text)
    return EXIT_OK


def _format_record(record: dict[str, Any]) -> str:
    lines = [f"{key:>14}: {record[key]}" for key in record if key not in ("history", "errors") and record[key]]
    for error in record["errors"]:
        lines.append(f"{'error':>14}: {error.get('code')} {error.get('title')} {error.get('detail') or ''}")
    lines.append(f"{'history':>14}: " + " -> ".join(h["status"] for h in record["history"]))
    return "\n".join(lines)


def cmd_cancel(args: argparse.Namespace) -> int:
    from producers import Producer

    with Producer.connect(_settings()) as producer:
        record = producer.cancel(args.id)
    emit(args, record, _format_record(record))
    return EXIT_OK


# -- processes, each built from the settings in worker/processes/ -------------------------------------

def cmd_worker(args: argparse.Namespace) -> int:
    from worker.processes.worker import run_worker
    from worker.queues import QUEUES

    queues = args.queues.split(",") if args.queues else list(QUEUES)
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown:
        raise ValidationError("--queues", f"unknown queue(s) {', '.join(map(repr, unknown))}; known: "
                                          f"{', '.join(QUEUES)}")
    return run_worker(_settings(), processes=args.processes, threads=args.threads, queues=queues)


def cmd_web(args: argparse.Namespace) -> int:
    from worker.processes.web import run_web

    return run_web(_settings(), host=args.host, port=args.port)


def cmd_scheduler(args: argparse.Namespace) -> int:
    from worker.processes.scheduler import run_scheduler

    return run_scheduler(_settings())


def cmd_migrate(args: argparse.Namespace) -> int:
    """Bring the store's schema up to date (every process also does at start), for deployments that migrate
    in a release step of their own."""
    from worker.store import Store

    store = Store.from_url(_settings().database_url)
    try:
        store.migrate()
    finally:
        store.close()
    emit(args, {"migrated": True}, "store schema is up to date")
    return EXIT_OK


def cmd_simulator(args: argparse.Namespace) -> int:
    import uvicorn

    from worker.simulator import Simulator, SimulatorConfig, create_app
    from worker.simulator.faults import FaultConfig
    from worker.simulator.throughput import TELNYX_ACCOUNT_MPS, TELNYX_MPS, ThroughputConfig

    telnyx: dict[str, Any] = {"mps": TELNYX_MPS, **TELNYX_ACCOUNT_MPS} if args.telnyx_rates else {"mps": {}}
    try:
        faults = FaultConfig(
            fail_5xx=args.fail_5xx, fail_429=args.fail_429, fail_reset=args.fail_reset, fail_timeout=args.fail_timeout,
            latency_ms=args.latency_ms, latency_jitter_ms=args.latency_jitter_ms, latency_sigma=args.latency_sigma,
            hang_s=args.hang,
        )
        throughput = ThroughputConfig(
            mps={**telnyx["mps"], **dict(args.mps or [])}, sender_mps=dict(args.sender_mps or []),
            account_sms_mps=args.account_sms_mps or telnyx.get("sms"),
            account_mms_mps=args.account_mms_mps or telnyx.get("mms"), queue_horizon_s=args.queue_horizon,
        )
    except ValueError as exc:
        raise ValidationError("simulator", str(exc)) from exc
    config = SimulatorConfig(
        webhook_url=args.webhook_url or None, webhook_failover_url=args.failover_url, api_key=args.api_key,
        key_seed=args.key_seed, outcomes={args.outcome: 1.0}, sent_delay_s=args.sent_delay,
        final_delay_s=args.final_delay, seed=args.seed, faults=faults, throughput=throughput,
        numbers=tuple(args.numbers or ()), any_sender=args.any_sender,
    )
    simulator = Simulator(config)
    print(f"Telnyx simulator on http://{args.host}:{args.port}/v2  "
          f"(TELNYX_BASE_URL=http://{args.host}:{args.port}/v2)", flush=True)
    print(f"TELNYX_PUBLIC_KEY={simulator.public_key}", flush=True)
    uvicorn.run(create_app(simulator), host=args.host, port=args.port, log_level="warning", log_config=None)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from producers.demo import run_demo

    return run_demo(_settings(), out=sys.stdout)


# -- parser -------------------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    """argparse's parser with CONTRACT.md's errors: one line naming the option, exit 2, no usage block.

    Subparsers are built by ``add_parser`` with the class of their parent, so every subcommand inherits this.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"sendq: error: {one_line(message)}\n")


def one_line(message: str) -> str:
    """argparse's message, reworded as ``OPTION: what is wrong`` on a single line."""
    message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
    required = re.match(r"^the following arguments are required: (.+)$", message)
    if required:
        names = required.group(1)
        message = f"{names}: {'are' if ',' in names else 'is'} required"
    message = message.replace("invalid choice: ", "invalid choice ")
    return " ".join(message.split())


def _positive(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 (got {value!r})") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value!r})")
    return number


def _port(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number (got {value!r})") from None
    if not 1 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535 (got {value!r})")
    return number


def _number_list(value: str) -> list[str]:
    """``N1,N2,...``: +E.164 numbers or short codes."""
    from worker import sms

    numbers = [n.strip() for n in value.split(",") if n.strip()]
    wrong = [n for n in numbers if not (sms.is_e164(n) or sms.is_short_code(n))]
    if not numbers or wrong:
        raise argparse.ArgumentTypeError(f"expected +E.164 numbers or short codes separated by commas (got {value!r})")
    return numbers


def _rate(value: str) -> tuple[str, float]:
    """``NAME=MPS`` (``long_code=0.1``, ``+13125550100=5``) as a pair."""
    name, _, rate = value.rpartition("=")
    try:
        mps = float(rate)
    except ValueError:
        mps = 0.0
    if not name or not mps > 0:
        raise argparse.ArgumentTypeError("expected NAME=MPS with a positive MPS")
    return name, mps


def build_parser() -> argparse.ArgumentParser:
    from producers.validation import KINDS, PRIORITIES

    parser = Parser(prog="sendq", description="Bulk and scheduled messaging through Telnyx.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_text: str,
            json_flag: bool = False) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(handler=handler)
        if json_flag:
            command.add_argument("--json", action="store_true", help="print one JSON object")
        return command

    send = add("send", cmd_send, "accept one message", json_flag=True)
    send.add_argument("--to", required=True, help="recipient, E.164 (group_mms: up to 8, comma-separated)")
    send.add_argument("--from", dest="from_", help="sender: E.164 number, short code or alphanumeric ID")
    send.add_argument("--profile", help="messaging profile UUID (number pools, alphanumeric senders)")
    send.add_argument("--text", help="message text")
    send.add_argument("--media", action="append", metavar="URL", help="media URL (repeatable, MMS)")
    send.add_argument("--kind", default="auto", choices=KINDS)
    send.add_argument("--priority", default="normal", choices=PRIORITIES)
    send.add_argument("--idempotency-key", help="sending twice with the same key sends once")
    send.add_argument("--send-at", metavar="ISO8601", help="when to send, with a UTC offset (1 s to a year ahead)")
    send.add_argument("--schedule-mode", choices=("local", "telnyx"), default="local",
                      help="who holds a scheduled message: sendq (any horizon) or Telnyx (5 minutes to 5 days)")
    send.add_argument("--valid-for", type=int, metavar="SECONDS",
                      help="not sent after this many seconds (from --send-at or now): it ends expired")

    cancel = add("cancel", cmd_cancel, "cancel a message not yet sent", json_flag=True)
    cancel.add_argument("id")

    status = add("status", cmd_status, "show one message's record", json_flag=True)
    status.add_argument("id")

    worker = add("worker", cmd_worker, "run dramatiq workers for every actor")
    worker.add_argument("--processes", type=_positive, default=2)
    worker.add_argument("--threads", type=_positive, default=8)
    worker.add_argument("--queues", help="comma-separated queues to serve (default: all)")

    web = add("web", cmd_web, "run the webhook receiver, health and metrics")
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=_port, default=DEFAULT_WEB_PORT)

    add("scheduler", cmd_scheduler,
        "run the periodic loop: scheduled messages, lost jobs, reconciliation, opt-out sync")

    add("migrate", cmd_migrate, "create or upgrade the store's schema (processes also do at start)", json_flag=True)

    sim = add("simulator", cmd_simulator, "run the local Telnyx API simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=_port, default=DEFAULT_SIMULATOR_PORT)
    sim.add_argument("--webhook-url", default=f"http://127.0.0.1:{DEFAULT_WEB_PORT}/webhooks/telnyx",
                     help="where webhooks go when a message names none ('' for nowhere)")
    sim.add_argument("--failover-url", help="webhook failover URL")
    sim.add_argument("--api-key", help="require this bearer key (default: accept any)")
    sim.add_argument("--key-seed", default="sendq-simulator", help="seed of the webhook signing key")
    outcomes = sim.add_argument_group(
        "delivery outcome",
        "One send can ask for its own outcome with the request header 'x-sim-outcome: STATUS' (e.g. "
        "'x-sim-outcome: delivery_failed' fails that message's delivery, with error 40008 in its "
        "message.finalized and in GET /v2/messages/{id}).")
    outcomes.add_argument("--outcome", default="delivered",
                          choices=["delivered", "delivery_failed", "delivery_unconfirmed", "sending_failed", "expired"],
                          help="final status of every recipient of a send that asks for none")
    sim.add_argument("--sent-delay", type=float, default=0.05, help="seconds from accept to message.sent")
    sim.add_argument("--final-delay", type=float, default=0.05, help="seconds from sent to message.finalized")
    sim.add_argument("--seed", type=int, default=0, help="seed of every random choice (outcomes, faults)")
    owned = sim.add_argument_group(
        "sender ownership (Telnyx refuses a 'from' the account does not own: 40305)",
        "The account owns its seeded numbers (+13125550001, the pool +13125550100-102, +13125550190, toll-free "
        "+18445550001, short code 22395, ...), those given here, and those added with POST /_sim/numbers.")
    owned.add_argument("--numbers", type=_number_list, metavar="N1,N2,...",
                       help="more numbers the account owns (on the default messaging profile)")
    owned.add_argument("--any-sender", action="store_true",
                       help="accept any well-formed sender, owned or not (benchmarks with many made-up senders)")
    faults = sim.add_argument_group("fault injection on /v2 (per request also: x-sim-fault, x-sim-latency-ms)")
    faults.add_argument("--fail-5xx", type=float, default=0.0, metavar="P", help="chance of a 500/502/503")
    faults.add_argument("--fail-429", type=float, default=0.0, metavar="P", help="chance of a 429 (10011)")
    faults.add_argument("--fail-reset", type=float, default=0.0, metavar="P",
                        help="chance of accepting, then dropping the connection mid-body")
    faults.add_argument("--fail-timeout", type=float, default=0.0, metavar="P",
                        help="chance of accepting, then holding the answer for --hang seconds")
    faults.add_argument("--hang", type=float, default=30.0, metavar="S", help="how long a timeout holds its answer")
    faults.add_argument("--latency-ms", type=float, default=0.0, metavar="N", help="latency added to every request")
    faults.add_argument("--latency-jitter-ms", type=float, default=0.0, metavar="N", help="plus uniform 0..N ms")
    faults.add_argument("--latency-sigma", type=float, default=0.0, metavar="S",
                        help="make --latency-ms the median of a lognormal with this sigma")
    rates = sim.add_argument_group("throughput (messages over a rate are queued, as Telnyx does; default unlimited)")
    rates.add_argument("--telnyx-rates", action="store_true",
                       help="start from Telnyx's default rates (long code 0.1, toll-free 20, short code 1000, "
                            "alphanumeric 0.1; account SMS 50, MMS 15 MPS)")
    rates.add_argument("--mps", type=_rate, action="append", metavar="TYPE=N",
                       help="rate of a sender type: long_code, toll_free, short_code, alphanumeric (repeatable)")
    rates.add_argument("--sender-mps", type=_rate, action="append", metavar="SENDER=N",
                       help="rate of one sender (repeatable; wins over its type)")
    rates.add_argument("--account-sms-mps", type=float, metavar="N", help="account-wide SMS parts per second")
    rates.add_argument("--account-mms-mps", type=float, metavar="N", help="account-wide MMS per second")
    rates.add_argument("--queue-horizon", type=float, default=14_400.0, metavar="S",
                       help="longest wait a queue holds before 429/40318 (Telnyx: 14400 s = MPS x 4 h messages)")

    add("demo", cmd_demo, "run everything on embedded defaults against the simulator and send a batch")

    from producers import bulk_cli, campaign_cli, dlq_cli, limits_cli, ops_cli, optouts_cli

    bulk_cli.register(add)
    campaign_cli.register(add)
    ops_cli.register(sub, add)
    optouts_cli.register(add)
    limits_cli.register(add)
    dlq_cli.register(add)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from worker.logs import Redactor, configure_logging, secrets_of

    try:
        # Every command: a bad variable is bad input (exit 2, named) even where the command would not read it.
        settings = _settings()
    except ValidationError as exc:
        print(f"sendq: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    # Long-running processes log what they do; one-shot commands print their answer and only warnings.
    long_running = args.command in ("worker", "web", "scheduler", "simulator")
    configure_logging(settings.log_level if long_running else "WARNING", json_format=settings.log_format == "json",
                      secrets=secrets_of(settings))
    # An error message must not carry the API key either; it may echo the number the operator typed.
    redact = Redactor(secrets_of(settings), numbers=False)
    try:
        return int(args.handler(args))
    except ValidationError as exc:
        print(f"sendq: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except SendqError as exc:
        print(f"sendq: error: {redact(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as exc:
        # The store's engine raises StoreUnavailable itself; Redis is reached through redis-py and dramatiq,
        # whose connection errors become "redis unavailable: ..." here, one line, exit 1, rather than a traceback.
        from worker.dependencies import unavailable

        outage = unavailable(exc)
        if outage is None:
            raise
        print(f"sendq: error: {redact(str(outage))}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
