"""`GET /v1/images/{image_id}`: a gallery image or its thumbnail. The id is only a key
into the index metadata; the file path comes from the index, never from the request."""

from __future__ import annotations

import mimetypes
from functools import lru_cache
from io import BytesIO
from pathlib import Path

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse, RedirectResponse, Response

from app.deps import ServiceDep, SettingsDep
from app.errors import ApiError
from app.schemas import ERROR_RESPONSES
from index_builder.format.records import CONTROL_CHARS
from model.features.images import ImageError, load_image

router = APIRouter(prefix="/v1", tags=["gallery"], responses=ERROR_RESPONSES)

THUMBNAIL_CACHE = 512  # thumbnails kept in memory (about 10 kB each at 256 px)
MAX_ID_CHARS = 512


@router.get(
    "/images/{image_id:path}",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}, "image/png": {}}, "description": "image"}},
)
async def get_image(
    image_id: str,
    service: ServiceDep,
    settings: SettingsDep,
    size: int | None = Query(None, ge=16, le=1024, description="thumbnail: longest side, px"),
):
    """The image file (or a JPEG thumbnail with `size`), or a redirect for http(s) URIs."""
    if not image_id or len(image_id) > MAX_ID_CHARS:
        raise ApiError(404, "unknown_id", "image ids are 1 to 512 characters")
    if CONTROL_CHARS.search(image_id):
        raise ApiError(404, "unknown_id", "image ids contain no control characters")
    loaded = service.current  # one index for the whole request, even during a reload
    record = loaded.searcher.image_record(image_id)  # UnknownIdError: 404
    uri = record.uri
    if not uri:
        raise ApiError(404, "no_image_file", f"image {image_id!r} was indexed without a file")
    if uri.startswith(("http://", "https://")):
        return RedirectResponse(uri, status_code=307)
    path = resolve_image_path(uri, settings.image_root, loaded.index_path)
    if size is None:
        media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})
    data = await service.executor.run(_thumbnail, str(path), path.stat().st_mtime_ns, size)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


def resolve_image_path(uri: str, image_root: Path | None, index_path: Path) -> Path:
    """A stored path -> an existing file. Relative paths are read under image_root when
    it is set, else next to the index or under the working directory (where a relative
    build usually ran); they may not climb out of that folder."""
    path = Path(uri.removeprefix("file://"))
    if path.is_absolute():
        if not path.is_file():
            raise ApiError(
                404, "no_image_file", f"the image file of this id is missing ({path.name})"
            )
        return path
    roots = [image_root] if image_root is not None else [index_path.parent, Path.cwd()]
    for root in (r.resolve() for r in roots):
        candidate = (root / path).resolve()
        if not candidate.is_relative_to(root):
            raise ApiError(404, "no_image_file", "the stored image path leaves the image root")
        if candidate.is_file():
            return candidate
    raise ApiError(404, "no_image_file", f"the image file of this id is missing ({path.name}); "
                   "set CHAN_IMAGE_ROOT to the folder its relative path starts from")  # fmt: skip


@lru_cache(maxsize=THUMBNAIL_CACHE)
def _thumbnail(path: str, mtime_ns: int, size: int) -> bytes:
    """JPEG thumbnail, longest side `size`; cached per file version."""
    try:
        image = load_image(Path(path))
    except ImageError as exc:
        raise ApiError(404, "no_image_file", f"the stored image cannot be read: {exc}") from None
    image.thumbnail((size, size))
    out = BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()
