"""Everything a client can send wrong gets a 4xx JSON error that says what to fix;
never a 5xx."""

import json

import pytest

from tests.app.conftest import chunked, make_client, noise_jpeg, upload_part
from tests.conftest import bomb_png

DEEP_ARRAYS = b"[" * 10_000 + b"]" * 10_000
DEEP_OBJECTS = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
MANY_KEYS = {f"key{n}": n for n in range(1200)}

BAD = [  # (name, method, path, request kwargs, status, words in the message)
    ("empty text", "post", "/v1/search/images", {"json": {"text": ""}}, 422, "text"),
    ("blank text", "post", "/v1/search/images", {"json": {"text": "   "}}, 422, "word"),
    (
        "2000-char text",
        "post",
        "/v1/search/images",
        {"json": {"text": "a" * 2000}},
        422,
        "at most 1000",
    ),
    (
        "1 MB JSON body",
        "post",
        "/v1/search/images",
        {"json": {"text": "a" * (1 << 20)}},
        413,
        "65,536 bytes",
    ),
    (
        "48 MB JSON body (captions)",
        "post",
        "/v1/search/captions",
        {
            "content": b'{"image_id": "' + b"x" * (48 << 20) + b'"}',
            "headers": {"content-type": "application/json"},
        },
        413,
        "65,536 bytes",
    ),
    (
        "chunked 1 MB JSON body",
        "post",
        "/v1/search/images",
        {
            "content": chunked(b'{"text": "' + b"a" * (1 << 20) + b'"}'),
            "headers": {"content-type": "application/json"},
        },
        413,
        "65,536 bytes",
    ),
    (
        "JSON 10,000 arrays deep",
        "post",
        "/v1/search/captions",
        {"content": DEEP_ARRAYS, "headers": {"content-type": "application/json"}},
        422,
        "deep",
    ),
    (
        "JSON 10,000 objects deep",
        "post",
        "/v1/search/images",
        {"content": DEEP_OBJECTS, "headers": {"content-type": "application/json"}},
        422,
        "deep",
    ),
    (
        "JSON 10,000 deep (score)",
        "post",
        "/v1/score",
        {"content": DEEP_ARRAYS, "headers": {"content-type": "application/json"}},
        422,
        "deep",
    ),
    (
        "deep filter field (form)",
        "post",
        "/v1/search/captions",
        {
            "files": {"file": ("q", noise_jpeg(), "image/jpeg")},
            "data": {"filter": DEEP_ARRAYS.decode()},
        },
        422,
        "form field 'filter'",
    ),
    (
        "deep k field (form)",
        "post",
        "/v1/search/captions",
        {
            "files": {"file": ("q", noise_jpeg(), "image/jpeg")},
            "data": {"k": DEEP_OBJECTS.decode()},
        },
        422,
        "deep",
    ),
    (
        "filter with 1,200 keys",
        "post",
        "/v1/search/images",
        {"json": {"text": "a", "filter": MANY_KEYS}},
        422,
        "at most 32 keys",
    ),
    (
        "filter with 1,200 keys (form)",
        "post",
        "/v1/search/captions",
        {
            "files": {"file": ("q", noise_jpeg(), "image/jpeg")},
            "data": {"filter": json.dumps(MANY_KEYS)},
        },
        422,
        "at most 32 keys",
    ),
    (
        "filter with 1,000 values",
        "post",
        "/v1/search/images",
        {"json": {"text": "a", "filter": {"half": list(range(1000))}}},
        422,
        "at most 256 values",
    ),
    ("NUL in an image id", "get", "/v1/images/img000030%00.png", {}, 404, "control"),
    (
        "NUL in a JSON image id",
        "post",
        "/v1/search/captions",
        {"json": {"image_id": "img000030\x00"}},
        422,
        "image_id",
    ),
    ("k=0", "post", "/v1/search/images", {"json": {"text": "a", "k": 0}}, 422, "k"),
    (
        "k=10**6",
        "post",
        "/v1/search/images",
        {"json": {"text": "a", "k": 10**6}},
        422,
        "at most 100",
    ),
    (
        "huge candidates",
        "post",
        "/v1/search/images",
        {"json": {"text": "a", "candidates": 10**9}},
        422,
        "candidates",
    ),
    ("unknown field", "post", "/v1/search/images", {"json": {"text": "a", "kk": 1}}, 422, "kk"),
    ("text not a string", "post", "/v1/search/images", {"json": {"text": ["a"]}}, 422, "text"),
    (
        "bad filter key",
        "post",
        "/v1/search/images",
        {"json": {"text": "a", "filter": {"a b;": 1}}},
        400,
        "metadata key",
    ),
    (
        "malformed JSON",
        "post",
        "/v1/search/images",
        {"content": b"{nope", "headers": {"content-type": "application/json"}},
        422,
        "json",
    ),
    (
        "malformed JSON (captions)",
        "post",
        "/v1/search/captions",
        {"content": b"{nope", "headers": {"content-type": "application/json"}},
        400,
        "JSON",
    ),
    ("JSON array", "post", "/v1/search/captions", {"json": [1, 2]}, 422, "object"),
    (
        "wrong content type",
        "post",
        "/v1/search/captions",
        {"content": b"x", "headers": {"content-type": "text/plain"}},
        415,
        "multipart",
    ),
    (
        "non-image upload",
        "post",
        "/v1/search/captions",
        upload_part(b"hello, not an image"),
        400,
        "not a JPEG",
    ),
    (
        "truncated JPEG",
        "post",
        "/v1/search/captions",
        upload_part(noise_jpeg()[:1200]),
        400,
        "truncated",
    ),
    (
        "30000 x 30000 PNG",
        "post",
        "/v1/search/captions",
        upload_part(bomb_png(30000, 30000), "image/png"),
        400,
        "pixels",
    ),
    (
        "upload type",
        "post",
        "/v1/search/captions",
        upload_part(noise_jpeg(), "application/pdf"),
        415,
        "image/jpeg",
    ),
    ("empty upload", "post", "/v1/search/captions", upload_part(b""), 400, "empty"),
    (
        "form without file",
        "post",
        "/v1/search/captions",
        {"data": {"k": "3"}, "files": {"other": ("x", b"x", "text/plain")}},
        422,
        "only `file`",
    ),
    (
        "bad form k",
        "post",
        "/v1/search/captions",
        {"files": {"file": ("q", noise_jpeg(), "image/jpeg")}, "data": {"k": "many"}},
        422,
        "k",
    ),
    (
        "unknown image id",
        "post",
        "/v1/search/captions",
        {"json": {"image_id": "ghost"}},
        404,
        "ghost",
    ),
    (
        "unknown id (score)",
        "post",
        "/v1/score",
        {"json": {"text": "a", "image_id": "ghost"}},
        404,
        "ghost",
    ),
    (
        "score without text",
        "post",
        "/v1/score",
        {"files": {"file": ("q", noise_jpeg(), "image/jpeg")}},
        422,
        "text",
    ),
    ("unknown image file", "get", "/v1/images/ghost", {}, 404, "ghost"),
    ("../ in id", "get", "/v1/images/..%2F..%2Fetc%2Fpasswd", {}, 404, "not in the index"),
    ("dot-dot path", "get", "/v1/images/../../etc/passwd", {}, 404, ""),
    ("thumbnail size", "get", "/v1/images/x", {"params": {"size": 100000}}, 422, "size"),
    ("unknown route", "get", "/v1/nothing", {}, 404, ""),
    ("wrong method", "get", "/v1/search/images", {}, 405, ""),
    ("reload without key configured", "post", "/v1/admin/reload", {}, 403, "CHAN_API_KEY"),
]


@pytest.mark.parametrize(("name", "method", "path", "kwargs", "status", "words"), BAD,
                         ids=[case[0] for case in BAD])  # fmt: skip
def test_bad_input_gets_a_4xx_that_says_what_to_fix(client, name, method, path, kwargs, status,
                                                    words):  # fmt: skip
    response = getattr(client, method)(path, **kwargs)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] and words.lower() in error["message"].lower()


def _post_routes(client) -> list[str]:
    paths = client.get("/openapi.json").json()["paths"]
    return sorted(path for path, methods in paths.items() if "post" in methods)


@pytest.mark.parametrize(
    "body",
    [DEEP_ARRAYS, DEEP_OBJECTS, b'{"a": ' * 33 + b"1" + b"}" * 33, b"[" * 100_000,
     b'{"text": "' + b"a" * 70_000 + b'"}'],
    ids=["arrays", "objects", "33 deep", "unclosed", "70 kB"],
)  # fmt: skip
def test_every_json_route_bounds_depth_and_size_before_parsing(client, body):
    routes = _post_routes(client)
    assert {"/v1/search/images", "/v1/search/captions", "/v1/score"} <= set(routes)
    for path in routes:
        response = client.post(path, content=body, headers={"content-type": "application/json"})
        assert response.status_code in (413, 422), (path, response.text)
        assert response.json()["error"]["request_id"]
    assert client.post("/v1/search/images", json={"text": "a red circle"}).status_code == 200


def test_the_depth_bound_is_a_setting(gallery):
    nested = {"text": "a", "filter": {"half": 1}}  # depth 2
    with make_client(gallery, max_json_depth=2) as strict:
        assert strict.post("/v1/search/images", json=nested).status_code == 200
        deeper = strict.post("/v1/search/images", json={"text": "a", "filter": {"a": [1]}})
        assert deeper.status_code == 422
        assert "nested 3 levels deep; at most 2" in deeper.json()["error"]["message"]


def test_json_depth_counts_structure_not_strings():
    from app.bodylimit import json_depth

    assert json_depth(b'{"a": [1, {"b": 2}]}') == 3
    assert json_depth(b'{"text": "[[[[{{{{ \\" ]]]"}') == 1
    assert json_depth(b"") == 0 and json_depth(b"7") == 0
    assert json_depth(DEEP_ARRAYS) == 10_000


def test_the_service_still_answers_after_bad_input(client):
    for _, method, path, kwargs, _, _ in BAD:
        getattr(client, method)(path, **kwargs)
    assert client.post("/v1/search/images", json={"text": "a red circle"}).status_code == 200


def test_oversized_and_unsized_uploads_are_refused_before_reading(gallery):
    with make_client(gallery, max_upload_bytes=4096) as small:
        big = small.post("/v1/search/captions", **upload_part(b"\xff" * 200_000))
        assert big.status_code == 413 and "4,096" in big.json()["error"]["message"]
        just_over = small.post("/v1/search/captions", **upload_part(noise_jpeg() + b"\0" * 5000))
        assert just_over.status_code == 413
