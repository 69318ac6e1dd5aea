"""What to do about a Telnyx error: one table of HTTP status x Telnyx code, and sender holds.

Every failure of a Telnyx call is decided here, once, by :func:`classify`:

- ``RETRY_NOW``: retried inside the call (tenacity, bounded, jittered, same ``Idempotency-Key``); once the
  in-call attempts are spent, the job is retried through the queue like ``RETRY_LATER``.
- ``RETRY_LATER``: not retried in the call; the job is retried through the queue with exponential backoff and
  jitter (no sooner than ``Decision.delay_s`` when Telnyx gave a hint), then ``failed`` when retries run out.
- ``REJECT``: Telnyx refused the request itself; the message ends ``rejected``. No 4xx refusal is retried (the
  official SDK retries 409, which would resend a STOP-blocked message three times: not copied here).
- ``SUPPRESS``: the recipient opted out (40300); the message ends ``suppressed``.
- ``HOLD_SENDER``: the sender (or, with ``scope == ACCOUNT``, every sender) cannot send until an operator fixes
  something; it is held for ``Decision.hold_s`` (:class:`worker.holds.SenderHolds`), with a metric and a
  WARNING saying what to do, and its messages wait in the queue instead of failing one by one.

The most specific row wins: a row naming the code beats one naming only the status, an exact status beats a
status class (``4xx``, ``5xx``). An error listing several codes takes the most specific row over all of them,
the first code Telnyx listed on a tie. Codes from Telnyx's error reference whose HTTP status is not documented
are listed under ``4xx``, so they decide whatever 4xx status they come with.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from worker.errors import TelnyxError


class Action(enum.StrEnum):
    RETRY_NOW = "retry_now"
    RETRY_LATER = "retry_later"
    REJECT = "reject"
    SUPPRESS = "suppress"
    HOLD_SENDER = "hold_sender"


#: What a hold covers: the sender of the failed message, or every sender of the account (auth, funds).
SENDER, ACCOUNT = "sender", "account"
#: A server's retry hint longer than this is left to the job queue instead of sleeping on it in the call.
MAX_IN_CALL_WAIT_S = 5.0
#: The error code in a message's record for a send that may have reached Telnyx before its worker was lost
#: (resent with the same Idempotency-Key, or failed by SENDQ_AMBIGUOUS_POLICY).
AMBIGUOUS = "ambiguous"
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


@dataclass(frozen=True)
class Rule:
    """One row: ``status`` is an HTTP status, a class (``"4xx"``, ``"5xx"``) or None (no HTTP answer at all);
    ``code`` a Telnyx error code or None for any. ``wait_s`` is the hold time of ``HOLD_SENDER`` rows."""

    status: int | str | None
    code: str | None
    action: Action
    reason: str
    wait_s: float | None = None
    scope: str = SENDER


_R, _A = Rule, Action
_OPTED_OUT = "recipient opted out (STOP): never sent to again until they text START"

#: The classification table. README's "Failure handling" section shows it; tests/test_classify.py has one case
#: per row.
TABLE: tuple[Rule, ...] = (
    # -- no answer, or Telnyx's side failed: safe to repeat with the same Idempotency-Key ----------------------
    _R(None, None, _A.RETRY_NOW, "Telnyx unreachable, or the call broke mid-flight; retried with the same key"),
    _R("5xx", None, _A.RETRY_NOW, "Telnyx server error; retried in the call, then through the queue"),
    _R(408, None, _A.RETRY_NOW, "request timeout at Telnyx; retried with the same key"),
    _R(429, None, _A.RETRY_NOW, "too many API requests; retried after Telnyx's reset hint"),
    _R(429, "10011", _A.RETRY_NOW, "too many API requests (10011); retried after x-ratelimit-reset"),
    _R("4xx", "10007", _A.RETRY_LATER, "unexpected error, a temporary issue on Telnyx's end; retried later"),
    # -- rate and queue: the limiter should prevent these; they pass with time -------------------------------
    _R(429, "40318", _A.RETRY_LATER, "the sender's queue at Telnyx is full; retried after Telnyx's hint"),
    _R("4xx", "40005", _A.RETRY_LATER, "expired during transmission; retried later"),
    _R("4xx", "40006", _A.RETRY_LATER, "recipient server unavailable; retried later"),
    _R("4xx", "40008", _A.RETRY_LATER, "carrier did not accept the message; Telnyx lists it as retriable"),
    _R("4xx", "40011", _A.RETRY_LATER, "upstream carrier rate limit; retried later"),
    _R("4xx", "40014", _A.RETRY_LATER, "expired in Telnyx's queue (not billed); retried later"),
    # -- idempotency ----------------------------------------------------------------------------------------
    _R(409, "10036", _A.RETRY_LATER, "an attempt with this Idempotency-Key is still in flight; a later try "
                                     "gets its answer"),
    _R(422, "10037", _A.REJECT, "Idempotency-Key already used with another body; every retry would be refused"),
    # -- opt-out ----------------------------------------------------------------------------------------------
    _R(409, "40300", _A.SUPPRESS, _OPTED_OUT),
    _R("4xx", "40300", _A.SUPPRESS, _OPTED_OUT + " (under an undocumented status)"),
    # -- the account: nothing can be sent until an operator acts -----------------------------------------------
    _R(401, None, _A.HOLD_SENDER, "Telnyx refused the API key: set a valid TELNYX_API_KEY", 5 * MINUTE,
       scope=ACCOUNT),
    _R("4xx", "10009", _A.HOLD_SENDER, "authentication failed: set a valid TELNYX_API_KEY", 5 * MINUTE,
       scope=ACCOUNT),
    _R(403, "10010", _A.HOLD_SENDER, "the API key may not send messages: fix its permissions in the portal",
       5 * MINUTE, scope=ACCOUNT),
    _R("4xx", "20012", _A.HOLD_SENDER, "account inactive (maybe out of funds): check it in the portal", HOUR,
       scope=ACCOUNT),
    _R("4xx", "20013", _A.HOLD_SENDER, "account blocked: contact Telnyx support", HOUR, scope=ACCOUNT),
    _R("4xx", "20100", _A.HOLD_SENDER, "insufficient funds: top up the balance", HOUR, scope=ACCOUNT),
    _R("4xx", "40314", _A.HOLD_SENDER, "messaging is disabled on the account: contact Telnyx support", HOUR,
       scope=ACCOUNT),
    # -- the sender: its messages wait while the others go ----------------------------------------------------
    _R("4xx", "40010", _A.HOLD_SENDER, "sender not 10DLC-registered: register its brand and campaign", HOUR),
    _R("4xx", "40312", _A.HOLD_SENDER, "messaging profile disabled: enable it in the portal", HOUR),
    _R("4xx", "40315", _A.HOLD_SENDER, "unhealthy sender (low success or high spam rate): review its traffic "
                                       "with Telnyx", HOUR),
    _R("4xx", "40320", _A.HOLD_SENDER, "sender temporarily unusable (pending state): wait for it to be ready",
       5 * MINUTE),
    _R("4xx", "40321", _A.HOLD_SENDER, "no usable numbers on the messaging profile: add or enable pool numbers",
       10 * MINUTE),
    _R("4xx", "40329", _A.HOLD_SENDER, "toll-free number not verified: complete toll-free verification", HOUR),
    _R("4xx", "40330", _A.HOLD_SENDER, "toll-free number not provisioned for messaging", HOUR),
    _R("4xx", "40333", _A.HOLD_SENDER, "messaging profile spend limit reached: raise it in the portal", HOUR),
    _R("4xx", "40016", _A.HOLD_SENDER, "T-Mobile daily 10DLC cap reached: wait for the reset or raise the cap",
       HOUR),
    _R("4xx", "40018", _A.HOLD_SENDER, "AT&T 10DLC throughput limit: lower the sender's rate (sendq limits set)",
       MINUTE),
    _R("4xx", "40020", _A.HOLD_SENDER, "artificial traffic inflation: Telnyx blocks 2FA traffic for 24 h", DAY),
    # -- content: resending the same message cannot help ------------------------------------------------------
    _R("4xx", "40002", _A.REJECT, "carrier flagged the content as spam: change it before sending again"),
    _R("4xx", "40017", _A.REJECT, "AT&T flagged the content as spam: change it before sending again"),
    # -- every other refusal ----------------------------------------------------------------------------------
    _R(409, None, _A.REJECT, "conflict; not retried (the official SDK retries 409, sendq does not)"),
    _R("4xx", None, _A.REJECT, "Telnyx refused the request; the same request would be refused again"),
)


@dataclass(frozen=True)
class Decision:
    """What to do about one error.

    ``hold_s``: how long to hold (``HOLD_SENDER``). ``delay_s``: the least delay before the queue retries
    (``RETRY_NOW`` once its in-call attempts are spent, ``RETRY_LATER``): Telnyx's hint, None for none, in which
    case the queue's own backoff applies. ``code`` is the Telnyx code that decided, None when the status did.
    """

    action: Action
    reason: str
    rule: Rule
    hold_s: float | None = None
    delay_s: float | None = None
    scope: str = SENDER
    code: str | None = None


def _status_matches(rule_status: int | str | None, status: int | None) -> bool:
    if rule_status is None or status is None:
        return rule_status is None and status is None
    if isinstance(rule_status, int):
        return rule_status == status
    return 400 <= status < 500 if rule_status == "4xx" else status >= 500


def _specificity(rule: Rule) -> int:
    """Code beats status, status beats class: 3 status+code, 2 class+code, 1 status, 0 class."""
    return (2 if rule.code else 0) + (0 if isinstance(rule.status, str) else 1)


def find_rule(status: int | None, codes: list[str]) -> Rule:
    """The most specific row for an HTTP ``status`` (None: no HTTP error answer) and Telnyx ``codes``."""
    best: Rule | None = None
    for code in [*codes, None]:
        for rule in TABLE:
            if rule.code == code and _status_matches(rule.status, status) and \
                    (best is None or _specificity(rule) > _specificity(best)):
                best = rule
    if best is None:  # unreachable: every status falls in a class, and no status is the transport row
        raise LookupError(f"no classification row for {status} {codes}")
    return best


def classify(error: TelnyxError) -> Decision:
    """The :class:`Decision` for ``error``. A status below 400 (an unreadable 2xx body) counts as no answer."""
    status = error.status if error.status is not None and error.status >= 400 else None
    rule = find_rule(status, error.codes)
    hint = getattr(error, "retry_after_s", None)
    if rule.action is Action.HOLD_SENDER:
        hold = max(rule.wait_s or 0.0, hint or 0.0)
        return Decision(rule.action, rule.reason, rule, hold_s=hold, scope=rule.scope, code=rule.code)
    delay = hint if rule.action in (Action.RETRY_NOW, Action.RETRY_LATER) else None
    return Decision(rule.action, rule.reason, rule, delay_s=delay, code=rule.code)


def retryable_in_call(error: BaseException) -> bool:
    """Whether the transport should retry ``error`` inside the call: ``RETRY_NOW`` with no long wait asked."""
    if not isinstance(error, TelnyxError):
        return False
    hint = getattr(error, "retry_after_s", None)
    return classify(error).action is Action.RETRY_NOW and (hint is None or hint <= MAX_IN_CALL_WAIT_S)
