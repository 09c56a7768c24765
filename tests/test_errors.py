"""The error catalogue is the one source of the error tables (docs/schema.md), and every documented client error is
one of the test corpus's cases (tests/media.py) or named here with the test that sends it."""

from pathlib import Path

from deepfake_serving.core.errors import CATALOGUE, RequestError, internal_error, with_tables
from helpers import media

TABLES = Path(__file__).resolve().parents[1] / "docs" / "schema.md"

# Codes sent by tests outside the media tables.
SENT_ELSEWHERE = {
    "body_too_large": "test_torchserve.py::test_bodies_over_the_size_limits_are_refused_and_server_survives",
    "internal_error": "test_hostile_media.py::test_a_detector_fault_fails_only_its_own_request",
    "decode_budget_exceeded": "test_video_serving.py::test_the_decoded_pixel_budget_is_set_per_archive",
    "bad_sampling": "test_video_serving.py::test_bad_sampling_and_limits",
    "request_too_large": "test_torchserve.py::test_bodies_over_the_size_limits_are_refused_and_server_survives",
    "unauthorized": "test_torchserve.py::test_inference_without_the_key_is_unauthorized_in_our_format",
    "stream_interrupted": "test_video_serving.py::test_a_stream_whose_worker_dies_ends_with_an_error_event",
    "detection_budget_exceeded": "test_hostile_media.py::test_the_detection_budget_refuses_a_clip_of_tiled_faces",
    "explain_not_supported": "test_torchserve.py::test_a_served_ensemble_answers_as_in_process_and_refuses_explanations_alone",
    "not_explainable": "test_explanations.py::test_an_archive_without_torch_weights_is_not_explainable",
    "missing_file": "test_jobs.py::test_bad_job_requests_store_and_queue_nothing",
    "bad_option": "test_jobs.py::test_bad_job_requests_store_and_queue_nothing",
    "job_not_found": "test_jobs.py::test_unknown_jobs_and_cancelling_an_ended_job",
    "job_finished": "test_jobs.py::test_unknown_jobs_and_cancelling_an_ended_job",
    "rate_limited": "test_jobs.py::test_rate_and_quota_are_counted_once_across_two_front_processes",
    "job_too_long": "test_jobs.py::test_a_job_past_its_time_limit_fails_with_a_clear_reason",
    "too_many_streams": "test_front_door.py::test_many_streams_share_one_redis_connection_and_another_key_still_streams",
}
# Defensive: Triton checks a request's inputs against config.pbtxt before our model sees it.
UNREACHABLE = {"missing_input", "bad_input_shape"}


def test_the_readme_tables_are_generated_from_the_catalogue():
    text = TABLES.read_text()
    assert "<!-- errors:video -->" in text and "<!-- errors:request,image -->" in text
    assert with_tables(text) == text, "run `make docs` to regenerate the error tables of docs/schema.md"


def test_every_client_error_code_is_sent_by_a_test():
    in_tables = {code for _, _, code in media.BAD_IMAGES.values()} | {code for _, _, code in media.BAD_VIDEOS.values()}
    client_codes = {code for code, kind in CATALOGUE.items() if kind.scope != "server"}
    missing = client_codes - in_tables - set(SENT_ELSEWHERE) - UNREACHABLE
    assert not missing, f"documented but never sent: {sorted(missing)}"
    for _, status, code in [*media.BAD_IMAGES.values(), *media.BAD_VIDEOS.values()]:
        assert CATALOGUE[code].status == status


def test_errors_carry_the_catalogues_status():
    assert RequestError("frame_too_small", "x").to_dict() == {
        "error": {"code": "frame_too_small", "message": "x", "status": 422}}
    fault = internal_error(ZeroDivisionError("boom"))
    assert (fault.status, fault.code, fault.message) == (500, "internal_error", "ZeroDivisionError: boom")
