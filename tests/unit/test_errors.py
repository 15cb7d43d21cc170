import pytest

from bazaar.errors import HTTP_STATUS, BazaarError, http_status


@pytest.mark.parametrize(
    "code, status",
    [
        ("NOT_FOUND", 404),
        ("INVALID_ARGUMENT", 400),
        ("FAILED_PRECONDITION", 400),
        ("UNAVAILABLE", 503),
        ("DEADLINE_EXCEEDED", 504),
        ("INTERNAL", 500),
        ("UNIMPLEMENTED", 501),
    ],
)
def test_spec_mapping(code, status):
    assert http_status(code) == status
    assert BazaarError(code, "m").http_status == status


def test_unknown_code_becomes_internal_keeping_the_name():
    err = BazaarError("BOGUS", "what")
    assert err.code == "INTERNAL"
    assert "BOGUS" in err.message
    assert http_status("BOGUS") == 500


def test_every_code_maps_to_an_http_error_status():
    assert all(400 <= status < 600 for status in HTTP_STATUS.values())


def test_to_dict_omits_empty_details():
    assert BazaarError("NOT_FOUND", "x").to_dict() == {"code": "NOT_FOUND", "message": "x"}
    assert BazaarError("ABORTED", "x", {"epoch": 3}).to_dict()["details"] == {"epoch": 3}
