"""The two-body routes (captions, score): one OpenAPI operation per path with both request
bodies (JSON and the multipart upload), generated from the pydantic models; the routing
between them by content type; and what each of them refuses."""

import io

import pytest
from PIL import Image

from app.schemas import SearchOptions
from tests.app.conftest import chunked, make_client, noise_jpeg, upload_part

OPTIONS = {"k", "candidates", "explain", "exhaustive", "filter"}


@pytest.fixture(scope="module")
def document(client):
    return client.get("/openapi.json").json()


def _body_schemas(document, path: str) -> dict[str, dict]:
    """content type -> the resolved schema of the POST request body on `path`."""
    content = document["paths"][path]["post"]["requestBody"]["content"]
    schemas = document["components"]["schemas"]
    return {kind: schemas[c["schema"]["$ref"].split("/")[-1]] for kind, c in content.items()}


def test_captions_and_score_document_both_content_types(document):
    captions = _body_schemas(document, "/v1/search/captions")
    assert set(captions) == {"application/json", "multipart/form-data"}
    assert set(captions["application/json"]["properties"]) == OPTIONS | {"image_id"}
    form = captions["multipart/form-data"]
    assert set(form["properties"]) == OPTIONS | {"file"} and form["required"] == ["file"]
    assert form["properties"]["file"]["contentMediaType"] == "application/octet-stream"
    assert form["additionalProperties"] is False  # unknown form fields are refused

    score = _body_schemas(document, "/v1/score")
    assert set(score) == {"application/json", "multipart/form-data"}
    assert set(score["application/json"]["properties"]) == {"text", "image_id"}
    assert set(score["multipart/form-data"]["properties"]) == {"text", "file"}
    assert set(score["multipart/form-data"]["required"]) == {"text", "file"}


def test_the_form_fields_are_the_search_options(document):
    """Generated from the models, so the form cannot drift from the JSON options."""
    form = _body_schemas(document, "/v1/search/captions")["multipart/form-data"]
    assert set(form["properties"]) - {"file"} == set(SearchOptions.model_fields)
    as_json = SearchOptions.model_json_schema()["properties"]
    for name in SearchOptions.model_fields:
        assert form["properties"][name]["description"] == as_json[name]["description"]
    assert form["properties"]["k"]["minimum"] == 1 and form["properties"]["k"]["default"] == 10


def test_one_operation_per_path(document):
    captions = document["paths"]["/v1/search/captions"]
    assert list(captions) == ["post"]
    assert captions["post"]["operationId"] == "search_captions_v1_search_captions_post"
    assert "multipart upload" in captions["post"]["description"]
    assert {"413", "415", "422"} <= set(captions["post"]["responses"])
    ids = [op["operationId"] for path in document["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))


def _png() -> bytes:
    out = io.BytesIO()
    Image.effect_noise((48, 40), 60).convert("RGB").save(out, "PNG")
    return out.getvalue()


def test_the_content_type_picks_the_route(client):
    image_id = client.post("/v1/search/images", json={"text": "a circle", "k": 1}).json()[
        "hits"][0]["image_id"]  # fmt: skip
    by_id = client.post("/v1/search/captions", json={"image_id": image_id, "k": 2})
    form = {"k": "2", "filter": '{"half": 1}', "exhaustive": "true"}
    upload = client.post("/v1/search/captions", files={"file": ("q.png", _png(), "image/png")},
                         data=form)  # fmt: skip
    assert by_id.status_code == 200 and upload.status_code == 200, upload.text
    assert len(by_id.json()["hits"]) == 2 and upload.json()["exhaustive"] is True
    assert client.get("/v1/search/captions").status_code == 405
    metrics = client.get("/metrics").text
    # both routes of a path count under its one template
    assert 'route="/v1/search/captions",status="200"' in metrics


def _multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "b0und") -> bytes:
    """A multipart body by hand: (name, data, file content type or None for a text field)."""
    out = b""
    for name, data, kind in parts:
        head = f'Content-Disposition: form-data; name="{name}"'
        if kind is not None:
            head += f'; filename="{name}"\r\nContent-Type: {kind}'
        out += f"--{boundary}\r\n{head}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _png_bad_header() -> bytes:
    """A PNG whose IHDR chunk says 4 bytes: Pillow's header parser raises a ValueError."""
    return b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x04IHDR\x00\x00\x00\x01" + b"\x00" * 4


MULTIPART = {"content-type": "multipart/form-data; boundary=b0und"}
ONE_FILE = [("file", noise_jpeg(), "image/jpeg")]

BAD_UPLOADS = [  # (name, path, request kwargs, status, code, words in the message)
    ("not multipart", "/v1/search/captions",
     {"content": b"garbage", "headers": MULTIPART}, 400, "malformed_form", "malformed"),
    ("no boundary", "/v1/score", {"content": b"garbage",
     "headers": {"content-type": "multipart/form-data"}}, 400, "malformed_form", "boundary"),
    ("two files", "/v1/search/captions",
     {"content": _multipart(ONE_FILE * 2), "headers": MULTIPART}, 400, "malformed_form",
     "too many files"),
    ("17 fields", "/v1/search/captions",
     {"content": _multipart(ONE_FILE + [(f"f{n}", b"1", None) for n in range(17)]),
      "headers": MULTIPART}, 400, "malformed_form", "too many fields"),
    ("chunked upload", "/v1/search/captions",
     {"content": chunked(_multipart(ONE_FILE), 1000), "headers": MULTIPART}, 411,
     "length_required", "content-length"),
    ("file as a text field", "/v1/search/captions",
     {"content": _multipart([("file", b"abc", None)]), "headers": MULTIPART}, 422,
     "invalid_request", "file part"),
    ("unknown form field", "/v1/search/captions",
     {"files": {"file": ("q", noise_jpeg(), "image/jpeg")}, "data": {"kk": "3"}}, 422,
     "invalid_request", "kk: extra inputs"),
    ("unknown form field (score)", "/v1/score",
     {"files": {"file": ("q", noise_jpeg(), "image/jpeg")}, "data": {"text": "a", "kk": "3"}}, 422,
     "invalid_request", "kk: extra inputs"),
    ("image_id in a form", "/v1/search/captions",
     {"files": {"file": ("q", noise_jpeg(), "image/jpeg")}, "data": {"image_id": "x"}}, 422,
     "invalid_request", "image_id"),
    ("filter not JSON (form)", "/v1/search/captions",
     {"files": {"file": ("q", noise_jpeg(), "image/jpeg")}, "data": {"filter": "{nope"}}, 422,
     "invalid_request", "filter: input should be a valid dictionary"),
    ("bad filter key (form)", "/v1/search/captions",
     {"files": {"file": ("q", noise_jpeg(), "image/jpeg")}, "data": {"filter": '{"a b;": 1}'}}, 400,
     "bad_request", "metadata key"),
    ("explain not a boolean (form)", "/v1/search/captions",
     {"files": {"file": ("q", noise_jpeg(), "image/jpeg")}, "data": {"explain": "maybe"}}, 422,
     "invalid_request", "explain"),
    ("blank text (score form)", "/v1/score",
     {"files": {"file": ("q", noise_jpeg(), "image/jpeg")}, "data": {"text": "  "}}, 422,
     "invalid_request", "word"),
    ("PNG header Pillow refuses", "/v1/search/captions",
     upload_part(_png_bad_header(), "image/png"), 400, "bad_image", "not a JPEG"),
    ("malformed JSON body (score)", "/v1/score",
     {"content": b"{nope", "headers": {"content-type": "application/json"}}, 400,
     "malformed_json", "not valid JSON"),
    ("JSON body not UTF-8", "/v1/search/captions",
     {"content": b'{"image_id": "\xff"}', "headers": {"content-type": "application/json"}}, 400,
     "malformed_json", "not valid JSON"),
    ("no content type", "/v1/score", {"content": b"{}"}, 415, "unsupported_media_type",
     "not no type"),
    ("form-urlencoded", "/v1/search/captions", {"data": {"k": "3"}}, 415,
     "unsupported_media_type", "x-www-form-urlencoded"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "path", "kwargs", "status", "code", "words"), BAD_UPLOADS,
                         ids=[case[0] for case in BAD_UPLOADS])  # fmt: skip
def test_bad_bodies_on_the_two_body_routes(client, name, path, kwargs, status, code, words):
    response = client.post(path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and words.lower() in error["message"].lower(), error


def test_the_depth_bound_of_form_fields_is_the_same_setting(gallery):
    upload = {"file": ("q", noise_jpeg(), "image/jpeg")}
    with make_client(gallery, max_json_depth=2) as strict:
        ok = strict.post("/v1/search/captions", files=upload, data={"filter": '{"half": [1]}'})
        assert ok.status_code == 200, ok.text
        deeper = strict.post("/v1/search/captions", files=upload,
                             data={"filter": '{"half": [[1]]}'})  # fmt: skip
        assert deeper.status_code == 422
        message = deeper.json()["error"]["message"]
        assert "form field 'filter' is nested 3 levels deep; at most 2" in message
