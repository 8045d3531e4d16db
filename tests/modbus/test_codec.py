"""The sans-I/O codec: exact bytes out, strict checks on bytes in (no sockets, no clock)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dynexport.modbus import codec
from dynexport.modbus.client import Backoff
from dynexport.modbus.endpoints import SerialEndpoint
from dynexport.modbus.errors import ModbusExceptionResponse, ModbusFrameError
from dynexport.modbus.serial_port import char_time, frame_silence
from tests.modbus.servers import crc16_modbus, read_answer_pdu, rtu_frame, tcp_frame

READ = codec.read_request(3, 2, 40070, 3)


def test_tcp_request_bytes_follow_the_mbap_layout() -> None:
    assert codec.encode_tcp(READ, 0x1234) == bytes.fromhex("1234 0000 0006 02 03 9c86 0003")
    write = codec.write_multiple_request(1, 10, (1, 0xFFFF))
    assert codec.encode_tcp(write, 1) == bytes.fromhex(
        "0001 0000 000b 01 10 000a 0002 04 0001 ffff"
    )
    single = codec.write_single_request(5, 40000, 0xABCD)
    assert codec.encode_tcp(single, 9) == bytes.fromhex("0009 0000 0006 05 06 9c40 abcd")
    assert codec.encode_tcp(codec.read_request(4, 1, 0, 125), 2)[-5:] == bytes.fromhex(
        "04 0000 007d"
    )


def test_rtu_request_carries_a_correct_crc() -> None:
    frame = codec.encode_rtu(READ)
    assert frame[:-2] == bytes.fromhex("02 03 9c86 0003")
    assert frame[-2:] == crc16_modbus(frame[:-2])
    # The classic example from the Modbus over serial line guide: 01 03 0000 000a -> c5cd.
    assert codec.encode_rtu(codec.read_request(3, 1, 0, 10))[-2:] == bytes.fromhex("c5cd")


def test_tcp_answer_decodes_only_when_complete() -> None:
    frame = tcp_frame(7, 2, read_answer_pdu(3, [1, 2, 0xFFFF]))
    for cut in range(len(frame)):
        assert codec.decode_tcp(frame[:cut], READ, 7) is None
    reply = codec.decode_tcp(frame + b"extra", READ, 7)
    assert reply == codec.Reply(len(frame), (1, 2, 0xFFFF))


def test_rtu_answer_decodes_only_when_complete() -> None:
    frame = rtu_frame(2, read_answer_pdu(3, [10, 20, 30]))
    for cut in range(len(frame)):
        assert codec.decode_rtu(frame[:cut], READ) is None
    assert codec.decode_rtu(frame, READ) == codec.Reply(len(frame), (10, 20, 30))


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (tcp_frame(8, 2, read_answer_pdu(3, [1, 2, 3])), "wrong transaction id 8, expected 7"),
        (tcp_frame(7, 9, read_answer_pdu(3, [1, 2, 3])), "wrong unit 9"),
        (tcp_frame(7, 2, read_answer_pdu(4, [1, 2, 3])), "function 4"),
        (tcp_frame(7, 2, read_answer_pdu(3, [1, 2])), "6 bytes, expected 8"),
        (b"\x00\x07\x00\x01\x00\x09\x02\x03\x06" + bytes(6), "protocol id 1"),
        (b"\x00\x07\x00\x00\x01\x00\x02\x03", "MBAP length 256"),
        (b"\x00\x07\x00\x00\x00\x09\x02\x03\x05" + bytes(6), "byte count 5"),
    ],
)
def test_tcp_mismatches_are_frame_errors_naming_the_problem(frame: bytes, problem: str) -> None:
    with pytest.raises(ModbusFrameError, match="unit 2 function 3 address 40070") as err:
        codec.decode_tcp(frame, READ, 7)
    assert problem in str(err.value)


@pytest.mark.parametrize(
    ("frame", "problem"),
    [
        (rtu_frame(3, read_answer_pdu(3, [1, 2, 3])), "wrong unit 3"),
        (rtu_frame(2, read_answer_pdu(16, [1, 2, 3])), "function 16"),
        (rtu_frame(2, read_answer_pdu(3, [1] * 60)), "frame of 125 bytes announced, expected 11"),
        (rtu_frame(2, read_answer_pdu(3, [1, 2, 3]))[:-1] + b"\x00", "bad CRC"),
        (b"\xff\xfe\xfd\xfc\xfb", "wrong unit 255"),
    ],
)
def test_rtu_mismatches_are_frame_errors_naming_the_problem(frame: bytes, problem: str) -> None:
    with pytest.raises(ModbusFrameError, match="unit 2 function 3 address 40070") as err:
        codec.decode_rtu(frame, READ)
    assert problem in str(err.value)


def test_exception_answers_raise_with_unit_function_address_and_code() -> None:
    decoders: list[tuple[Callable[[bytes], object], bytes]] = [
        (lambda f: codec.decode_tcp(f, READ, 7), tcp_frame(7, 2, b"\x83\x02")),
        (lambda f: codec.decode_rtu(f, READ), rtu_frame(2, b"\x83\x02")),
    ]
    for decode, frame in decoders:
        with pytest.raises(ModbusExceptionResponse) as err:
            decode(frame)
        exc = err.value
        assert (exc.unit, exc.function, exc.address, exc.code) == (2, 3, 40070, 2)
        assert str(exc) == "unit 2 function 3 address 40070: exception 2 (illegal data address)"


def test_write_echo_must_match_the_request() -> None:
    single = codec.write_single_request(1, 100, 5)
    good = tcp_frame(1, 1, bytes.fromhex("06 0064 0005"))
    assert codec.decode_tcp(good, single, 1) == codec.Reply(len(good), ())
    with pytest.raises(ModbusFrameError, match="write echo"):
        codec.decode_tcp(tcp_frame(1, 1, bytes.fromhex("06 0064 0006")), single, 1)
    multi = codec.write_multiple_request(1, 100, (1, 2))
    good = rtu_frame(1, bytes.fromhex("10 0064 0002"))
    assert codec.decode_rtu(good, multi) == codec.Reply(len(good), ())
    with pytest.raises(ModbusFrameError, match="write echo"):
        codec.decode_rtu(rtu_frame(1, bytes.fromhex("10 0065 0002")), multi)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: codec.read_request(3, 1, 0, 0), "count 0: must be 1..125"),
        (lambda: codec.read_request(4, 1, 0, 126), "count 126: must be 1..125"),
        (lambda: codec.read_request(5, 1, 0, 1), "function 5"),
        (lambda: codec.read_request(3, 1, 65535, 2), "runs past register 65535"),
        (lambda: codec.read_request(3, 1, -1, 1), "address -1"),
        (lambda: codec.read_request(3, 256, 0, 1), "unit 256"),
        (lambda: codec.write_multiple_request(1, 0, (0,) * 124), "count 124: must be 1..123"),
        (lambda: codec.write_multiple_request(1, 0, ()), "count 0"),
        (lambda: codec.write_single_request(1, 0, 70000), "register value 70000"),
        (lambda: codec.write_single_request(1, 0, True), "register value True"),
    ],
)
def test_bad_requests_are_refused_before_any_io(build: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_backoff_doubles_up_to_its_maximum() -> None:
    backoff = Backoff(initial=0.1, maximum=5.0)
    delays = [backoff.delay(n) for n in range(0, 10)]
    assert delays[:4] == [0.0, 0.1, 0.2, 0.4]
    assert delays[-1] == 5.0
    assert delays == sorted(delays)
    assert backoff.delay(10_000) == 5.0
    with pytest.raises(ValueError):
        Backoff(initial=2, maximum=1)


def test_rtu_silence_is_three_and_a_half_characters_with_a_floor_above_19200() -> None:
    assert char_time(SerialEndpoint("x", 9600, "N", 1)) == pytest.approx(10 / 9600)
    assert char_time(SerialEndpoint("x", 9600, "E", 1)) == pytest.approx(11 / 9600)
    assert frame_silence(SerialEndpoint("x", 9600, "E", 1)) == pytest.approx(3.5 * 11 / 9600)
    assert frame_silence(SerialEndpoint("x", 19200, "N", 2)) == pytest.approx(3.5 * 11 / 19200)
    assert frame_silence(SerialEndpoint("x", 115200, "N", 1)) == 0.00175
