"""Hostile or broken server bodies: every one is refused with a `Sep2ParseError` naming the
resource and the problem, and none expands entities or reads files."""

from __future__ import annotations

import pytest

from dynexport.sep2 import resources as r
from dynexport.sep2.xml import DEFAULT_MAX_BYTES, Sep2ParseError, parse_xml

IEEE = 'xmlns="urn:ieee:std:2030.5:ns"'
TIME_BODY = (
    "<currentTime>{now}</currentTime><dstEndTime>0</dstEndTime><dstOffset>0</dstOffset>"
    "<dstStartTime>0</dstStartTime><quality>7</quality><tzOffset>0</tzOffset>"
)


def _time(now: str = "1700000000", ns: str = IEEE, prolog: str = "") -> bytes:
    return f"{prolog}<Time {ns}>{TIME_BODY.format(now=now)}</Time>".encode()


def test_well_formed_time_parses():
    assert r.parse_time(_time()).current_time == 1700000000


def test_malformed_xml_is_refused():
    with pytest.raises(Sep2ParseError, match=r"^Time: malformed XML"):
        r.parse_time(_time()[:-4])


def test_empty_body_is_refused():
    with pytest.raises(Sep2ParseError, match="empty body"):
        r.parse_time(b"  \n")


def test_oversized_body_is_refused_before_parsing():
    padding = b" " * DEFAULT_MAX_BYTES
    with pytest.raises(Sep2ParseError, match="exceeds the 1048576-byte limit"):
        r.parse_time(_time() + padding)
    # the cap is configurable
    with pytest.raises(Sep2ParseError, match="exceeds"):
        r.parse_as(r.Time, _time(), max_bytes=50)


def test_billion_laughs_is_refused_without_expansion():
    entities = '<!ENTITY a "xxxxxxxxxx">' + "".join(
        f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">' for i in range(9)
    )
    body = _time(now="&j;", prolog=f"<!DOCTYPE Time [{entities}]>")
    with pytest.raises(Sep2ParseError, match="DOCTYPE"):
        r.parse_time(body)


def test_billion_laughs_stays_inert_in_the_raw_parser():
    """Even before the DTD check, lxml with resolve_entities=False leaves the reference as is."""
    entities = '<!ENTITY a "xxxxxxxxxx"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
    body = f'<!DOCTYPE r [{entities}]><r xmlns="urn:ieee:std:2030.5:ns">&b;</r>'.encode()
    with pytest.raises(Sep2ParseError) as info:
        parse_xml(body, "Test")
    assert "xxxxxxxxxx" not in str(info.value)


def test_external_entity_is_refused_and_never_read(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    body = _time(now="&x;", prolog=f'<!DOCTYPE Time [<!ENTITY x SYSTEM "file://{secret}">]>')
    with pytest.raises(Sep2ParseError, match="DOCTYPE") as info:
        r.parse_time(body)
    assert "TOPSECRET" not in str(info.value)


def test_external_dtd_is_refused():
    body = _time(prolog='<!DOCTYPE Time SYSTEM "http://127.0.0.1:9/evil.dtd">')
    with pytest.raises(Sep2ParseError, match="DOCTYPE"):
        r.parse_time(body)


def test_wrong_namespace_is_named():
    with pytest.raises(Sep2ParseError, match=r"^Time: root <Time> is in namespace 'urn:wrong'"):
        r.parse_time(_time(ns='xmlns="urn:wrong"'))


def test_no_namespace_is_refused():
    with pytest.raises(Sep2ParseError, match="namespace"):
        r.parse_time(_time(ns=""))


def test_wrong_root_element_is_named():
    body = f'<EndDeviceList {IEEE} all="0" results="0"/>'.encode()
    with pytest.raises(
        Sep2ParseError, match=r"wrong root element <EndDeviceList>, expected <Time>"
    ):
        r.parse_time(body)


def test_missing_required_element_is_named():
    body = f"<Time {IEEE}><dstEndTime>0</dstEndTime></Time>".encode()
    with pytest.raises(Sep2ParseError, match="missing required element currentTime"):
        r.parse_time(body)


def test_missing_required_list_attribute_is_named():
    body = f'<DERControlList {IEEE} results="0"/>'.encode()
    with pytest.raises(Sep2ParseError, match="missing required attribute all"):
        r.parse_der_control_list(body)


@pytest.mark.parametrize("bad", ["12.5", "abc", "1_000", "", "0x10", "99999999999999999999999"])
def test_bad_numbers_are_named(bad):
    with pytest.raises(Sep2ParseError, match="currentTime"):
        r.parse_time(_time(now=bad))


def test_out_of_range_number_is_refused():
    body = f"""<DERProgram {IEEE}><mRID>01</mRID><primacy>256</primacy></DERProgram>"""
    with pytest.raises(Sep2ParseError, match=r"primacy: 256 out of range 0\.\.255"):
        r.parse_der_program(body.encode())


def test_bad_hex_flag_is_refused():
    body = f"""<MirrorUsagePoint {IEEE}><mRID>01</mRID><roleFlags>4G</roleFlags>
      <serviceCategoryKind>0</serviceCategoryKind><status>1</status>
      <deviceLFDI>AB</deviceLFDI></MirrorUsagePoint>"""
    with pytest.raises(Sep2ParseError, match="roleFlags: not hexBinary"):
        r.parse_mirror_usage_point(body.encode())


def test_nested_error_names_its_path():
    body = f"""<DERControlList {IEEE} xmlns:csipaus="https://csipaus.org/ns" all="1" results="1">
      <DERControl><mRID>01</mRID><creationTime>1</creationTime>
      <EventStatus><currentStatus>9</currentStatus><dateTime>1</dateTime>
      <potentiallySuperseded>false</potentiallySuperseded></EventStatus>
      <interval><duration>1</duration><start>1</start></interval>
      <DERControlBase/></DERControl></DERControlList>"""
    with pytest.raises(
        Sep2ParseError, match=r"DERControl\[0\]/EventStatus.*unknown event status 9"
    ):
        r.parse_der_control_list(body.encode())


def test_power_value_out_of_int16_is_refused():
    body = f"""<DefaultDERControl {IEEE} xmlns:csipaus="https://csipaus.org/ns"><mRID>01</mRID>
      <DERControlBase><csipaus:opModExpLimW><multiplier>0</multiplier><value>40000</value>
      </csipaus:opModExpLimW></DERControlBase></DefaultDERControl>"""
    with pytest.raises(Sep2ParseError, match=r"opModExpLimW.*out of range"):
        r.parse_default_der_control(body.encode())


def test_link_without_href_is_refused():
    body = f"<DeviceCapability {IEEE}><TimeLink/></DeviceCapability>".encode()
    with pytest.raises(Sep2ParseError, match="TimeLink: link without href"):
        r.parse_device_capability(body)


def test_non_bytes_input_is_a_type_error():
    with pytest.raises(TypeError):
        r.parse_time(_time().decode())  # type: ignore[arg-type]
