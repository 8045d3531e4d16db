"""Sans-I/O Modbus codec: requests to bytes, bytes to checked replies.

This is the only module that imports pymodbus (its PDU classes and framers do the encoding and
decoding; see docs/modbus.md). It must work with pymodbus 3.13.0 (Buildroot) and 3.16.1 (PyPI),
so it uses only the API both share: the PDU constructors, ``DecodePDU.decode`` /
``lookupPduClass``, ``calculateRtuFrameSize``, ``FramerSocket`` / ``FramerRTU`` ``buildFrame`` and
``decode``, and ``FramerRTU.compute_CRC``.

pymodbus' framers skip frames they do not like and hunt for the next one; a client that asked one
question wants one answer, so this module checks the transaction id, CRC, unit id, function code
and length itself and raises :class:`ModbusFrameError` on any mismatch instead of skipping.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pymodbus.framer import FramerRTU, FramerSocket
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersRequest,
    ReadInputRegistersRequest,
    WriteMultipleRegistersRequest,
    WriteSingleRegisterRequest,
)

from dynexport.modbus.errors import ModbusExceptionResponse, ModbusFrameError

READ_HOLDING_REGISTERS = 3
READ_INPUT_REGISTERS = 4
WRITE_SINGLE_REGISTER = 6
WRITE_MULTIPLE_REGISTERS = 16

MAX_READ_COUNT = 125
MAX_WRITE_COUNT = 123
MAX_UNIT = 255

_DECODER = DecodePDU(is_server=False)
_SOCKET = FramerSocket(_DECODER)
_RTU = FramerRTU(_DECODER)
_MBAP_HEADER = struct.Struct(">HHHB")


@dataclass(frozen=True)
class Request:
    """One Modbus request, validated when built (use the ``*_request`` functions)."""

    function: int
    unit: int
    address: int
    count: int
    values: tuple[int, ...] = ()

    def describe(self) -> str:
        """The words every error about this request starts with."""
        return f"unit {self.unit} function {self.function} address {self.address}"


@dataclass(frozen=True)
class Reply:
    """A complete, checked answer: ``size`` bytes of the buffer were this frame."""

    size: int
    registers: tuple[int, ...] = ()


def _check_unit(unit: int) -> None:
    if not isinstance(unit, int) or not 0 <= unit <= MAX_UNIT:
        raise ValueError(f"unit {unit!r}: must be 0..{MAX_UNIT}")


def _check_span(address: int, count: int, max_count: int) -> None:
    if not isinstance(address, int) or not 0 <= address <= 0xFFFF:
        raise ValueError(f"address {address!r}: must be 0..65535")
    if not isinstance(count, int) or not 1 <= count <= max_count:
        raise ValueError(f"count {count!r}: must be 1..{max_count}")
    if address + count - 1 > 0xFFFF:
        raise ValueError(f"address {address} + count {count} runs past register 65535")


def _check_value(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise ValueError(f"register value {value!r}: must be an integer 0..65535")
    return value


def read_request(function: int, unit: int, address: int, count: int) -> Request:
    """A read of ``count`` holding (3) or input (4) registers from raw address ``address``."""
    if function not in (READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
        raise ValueError(f"function {function}: only 3 and 4 read registers")
    _check_unit(unit)
    _check_span(address, count, MAX_READ_COUNT)
    return Request(function, unit, address, count)


def write_single_request(unit: int, address: int, value: int) -> Request:
    """A function 6 write of one register."""
    _check_unit(unit)
    _check_span(address, 1, 1)
    return Request(WRITE_SINGLE_REGISTER, unit, address, 1, (_check_value(value),))


def write_multiple_request(unit: int, address: int, values: tuple[int, ...]) -> Request:
    """A function 16 write of 1..123 consecutive registers."""
    _check_unit(unit)
    checked = tuple(_check_value(v) for v in values)
    _check_span(address, len(checked), MAX_WRITE_COUNT)
    return Request(WRITE_MULTIPLE_REGISTERS, unit, address, len(checked), checked)


def _pdu(request: Request, tid: int) -> ModbusPDU:
    unit, address = request.unit, request.address
    if request.function == READ_HOLDING_REGISTERS:
        return ReadHoldingRegistersRequest(
            dev_id=unit, transaction_id=tid, address=address, count=request.count
        )
    if request.function == READ_INPUT_REGISTERS:
        return ReadInputRegistersRequest(
            dev_id=unit, transaction_id=tid, address=address, count=request.count
        )
    registers = list(request.values)
    if request.function == WRITE_SINGLE_REGISTER:
        return WriteSingleRegisterRequest(
            dev_id=unit, transaction_id=tid, address=address, registers=registers
        )
    if request.function == WRITE_MULTIPLE_REGISTERS:
        return WriteMultipleRegistersRequest(
            dev_id=unit, transaction_id=tid, address=address, registers=registers
        )
    raise ValueError(f"function {request.function} is not supported")


def encode_tcp(request: Request, tid: int) -> bytes:
    """The Modbus TCP (MBAP) frame for ``request`` with transaction id ``tid`` (0..65535)."""
    if not 0 <= tid <= 0xFFFF:
        raise ValueError(f"transaction id {tid}: must be 0..65535")
    return _SOCKET.buildFrame(_pdu(request, tid))


def encode_rtu(request: Request) -> bytes:
    """The RTU frame (unit, PDU, CRC) for ``request``."""
    return _RTU.buildFrame(_pdu(request, 0))


def crc16(data: bytes) -> int:
    """The Modbus CRC of ``data`` as the two bytes appear on the wire (big-endian int)."""
    return int(FramerRTU.compute_CRC(data))


def _expected_pdu_size(request: Request) -> int:
    if request.function in (READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
        return 2 + 2 * request.count  # function, byte count, registers
    return 5  # function, address, value or count


def _check_pdu(pdu_bytes: bytes, request: Request) -> tuple[int, ...]:
    """Decode and check a response PDU against the request it answers."""
    what = request.describe()
    function = pdu_bytes[0]
    if function == request.function | 0x80:
        if len(pdu_bytes) != 2:
            raise ModbusFrameError(f"{what}: exception response of {len(pdu_bytes)} bytes, not 2")
        exc = _DECODER.decode(pdu_bytes)
        code = exc.exception_code if isinstance(exc, ExceptionResponse) else pdu_bytes[1]
        raise ModbusExceptionResponse(request.unit, request.function, request.address, code)
    if function != request.function:
        raise ModbusFrameError(f"{what}: answer carries function {function}")
    expected = _expected_pdu_size(request)
    if len(pdu_bytes) != expected:
        raise ModbusFrameError(
            f"{what}: response PDU of {len(pdu_bytes)} bytes, expected {expected}"
        )
    try:
        pdu = _DECODER.decode(pdu_bytes)
    except Exception as exc:  # pymodbus 3.13 lets struct.error escape
        raise ModbusFrameError(f"{what}: malformed response ({exc})") from exc
    if pdu is None:
        raise ModbusFrameError(f"{what}: malformed response {pdu_bytes.hex()}")
    registers = tuple(int(r) for r in pdu.registers)
    if request.function in (READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS):
        if pdu_bytes[1] != 2 * request.count or len(registers) != request.count:
            raise ModbusFrameError(
                f"{what}: byte count {pdu_bytes[1]} for {request.count} registers"
            )
        return registers
    if request.function == WRITE_SINGLE_REGISTER:
        if pdu.address != request.address or registers != request.values:
            raise ModbusFrameError(
                f"{what}: write echo names address {pdu.address} value {list(registers)}"
            )
        return ()
    if pdu.address != request.address or pdu.count != request.count:
        raise ModbusFrameError(f"{what}: write echo names address {pdu.address} count {pdu.count}")
    return ()


def decode_tcp(buffer: bytes | bytearray, request: Request, tid: int) -> Reply | None:
    """Check and decode the answer at the start of ``buffer``; ``None`` means "need more bytes".

    Raises ModbusFrameError as soon as the header shows the frame is not the answer (a wrong
    protocol id, length, transaction id or unit), and ModbusExceptionResponse for an exception.
    """
    what = request.describe()
    if len(buffer) < _MBAP_HEADER.size:
        return None
    got_tid, protocol, length, unit = _MBAP_HEADER.unpack_from(buffer)
    if protocol != 0:
        raise ModbusFrameError(f"{what}: protocol id {protocol}, not 0: not a Modbus TCP frame")
    if not 3 <= length <= 254:
        raise ModbusFrameError(f"{what}: MBAP length {length} outside 3..254")
    if got_tid != tid:
        raise ModbusFrameError(f"{what}: wrong transaction id {got_tid}, expected {tid}")
    if unit != request.unit:
        raise ModbusFrameError(f"{what}: answer from wrong unit {unit}")
    size = 6 + length
    if len(buffer) < size:
        return None
    used, _unit, _tid, pdu_bytes = _SOCKET.decode(bytes(buffer[:size]))
    if used != size or not pdu_bytes:
        raise ModbusFrameError(f"{what}: malformed frame {bytes(buffer[:size]).hex()}")
    return Reply(size, _check_pdu(bytes(pdu_bytes), request))


def decode_rtu(buffer: bytes | bytearray, request: Request) -> Reply | None:
    """Check and decode the RTU answer at the start of ``buffer``; ``None`` means "need more".

    The frame end comes from the PDU class (as in pymodbus' FramerRTU); the CRC, unit and
    function are checked here and any mismatch raises ModbusFrameError naming it.
    """
    what = request.describe()
    if not buffer:
        return None
    if buffer[0] != request.unit:
        raise ModbusFrameError(f"{what}: answer from wrong unit {buffer[0]} (or garbage)")
    if len(buffer) < 2:
        return None
    function = buffer[1]
    if function not in (request.function, request.function | 0x80):
        raise ModbusFrameError(f"{what}: answer carries function {function} (or garbage)")
    head = bytes(buffer[:3])
    pdu_class = _DECODER.lookupPduClass(head) if len(head) == 3 else None
    if pdu_class is None:
        return None
    size = pdu_class.calculateRtuFrameSize(head)
    if not size:
        return None
    expected = 5 if function & 0x80 else 3 + _expected_pdu_size(request)
    if size != expected:
        raise ModbusFrameError(f"{what}: frame of {size} bytes announced, expected {expected}")
    if len(buffer) < size:
        return None
    frame = bytes(buffer[:size])
    got_crc = int.from_bytes(frame[-2:], "big")
    if not FramerRTU.check_CRC(frame[:-2], got_crc):
        raise ModbusFrameError(
            f"{what}: bad CRC {got_crc:04x}, expected {crc16(frame[:-2]):04x} "
            f"in frame {frame.hex()}"
        )
    return Reply(size, _check_pdu(frame[1:-2], request))
