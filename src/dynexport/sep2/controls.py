"""The plain data the utility's controls boil down to, shared by the XML models and the scheduler.

These are what `resources` produces from DERControl / DefaultDERControl XML and what `schedule`
decides between. Times are integers: seconds since the Unix epoch in the *server's* clock (the
clock offset is applied by whoever asks the scheduler a question, never baked into the data).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import IntEnum, StrEnum


class ControlType(StrEnum):
    """The quantities a control can set; the scheduler decides each one independently.

    IEEE 2030.5 §12.1.3 resolves overlapping events per control mode: an event that sets only the
    export limit does not end another program's generation limit.
    """

    EXPORT_LIMIT_W = "export_limit_w"  # csipaus:opModExpLimW
    IMPORT_LIMIT_W = "import_limit_w"  # csipaus:opModImpLimW
    GENERATION_LIMIT_W = "generation_limit_w"  # csipaus:opModGenLimW
    LOAD_LIMIT_W = "load_limit_w"  # csipaus:opModLoadLimW
    MAX_LIMIT_PCT = "max_limit_pct"  # opModMaxLimW, percent of setMaxW
    CONNECT = "connect"  # opModConnect
    ENERGIZE = "energize"  # opModEnergize


class EventStatus(IntEnum):
    """EventStatus.currentStatus as the server reports it."""

    SCHEDULED = 0
    ACTIVE = 1
    CANCELLED = 2
    CANCELLED_WITH_RANDOMIZATION = 3
    SUPERSEDED = 4


class ResponseStatus(IntEnum):
    """DERControlResponse.status values a client sends (IEEE 2030.5 Table 27)."""

    RECEIVED = 1
    STARTED = 2
    COMPLETED = 3
    OPTED_OUT = 4
    OPTED_IN = 5
    CANCELLED = 6
    SUPERSEDED = 7
    ABORTED_COMMS = 252
    ABORTED_INVALID = 253
    ABORTED_OTHER = 254


@dataclass(frozen=True)
class ControlBase:
    """DERControlBase: each field None when the control does not set it.

    Power limits are in watts (ActivePower value × 10^multiplier already applied).
    ``ramp_tms`` is in hundredths of a second, as on the wire.
    """

    export_limit_w: float | None = None
    import_limit_w: float | None = None
    generation_limit_w: float | None = None
    load_limit_w: float | None = None
    max_limit_pct: float | None = None
    connect: bool | None = None
    energize: bool | None = None
    ramp_tms: int | None = None

    def get(self, kind: ControlType) -> float | bool | None:
        value: float | bool | None = getattr(self, kind.value)
        return value

    def types(self) -> frozenset[ControlType]:
        """The control types this base sets."""
        return frozenset(t for t in ControlType if self.get(t) is not None)

    def is_empty(self) -> bool:
        return not self.types()

    def merged_over(self, fallback: ControlBase) -> ControlBase:
        """This base's values, with ``fallback`` filling whatever this one leaves unset."""
        values = {}
        for f in fields(self):
            mine = getattr(self, f.name)
            values[f.name] = mine if mine is not None else getattr(fallback, f.name)
        return ControlBase(**values)


@dataclass(frozen=True)
class DERControlEvent:
    """One DERControl event, with what the scheduler needs of the program that holds it."""

    mrid: str
    """Hex mRID, uppercase; the identity of an event across polls."""
    creation_time: int
    start: int
    duration: int
    base: ControlBase
    primacy: int
    """The owning DERProgram's primacy: lower wins."""
    program_href: str = ""
    href: str | None = None
    status: EventStatus = EventStatus.SCHEDULED
    randomize_start: int = 0
    randomize_duration: int = 0
    response_required: int = 0
    """Bit flags: 0x01 response at receipt... (IEEE 2030.5 responseRequired, hexBinary8)."""
    reply_to: str | None = None
    description: str = ""

    @property
    def end(self) -> int:
        return self.start + self.duration


@dataclass(frozen=True)
class DefaultControl:
    """DefaultDERControl of one program: what applies when no event is active."""

    base: ControlBase
    primacy: int
    program_href: str = ""
    mrid: str = ""
    set_grad_w: int | None = None
    """Ramp rate in hundredths of a percent of max W per second (27 = 0.27 %/s)."""
    es_delay: int | None = None
    es_randomize: int | None = None


@dataclass(frozen=True)
class ProgramControls:
    """Everything one DERProgram contributes: its events and its default."""

    href: str
    primacy: int
    events: tuple[DERControlEvent, ...] = ()
    default: DefaultControl | None = None
    mrid: str = ""
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict)
