"""/easel/v1/images: search the gallery, thumbnails and files, favourite, rating, boards, trash (and emptying it).

Behind the same middlewares as every route (auth with --auth, same-origin, Host check). Images
are named by their index id, never by a path the client sends, so nothing outside the indexed
folders and the trash can be read through these routes.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query as Q
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict
from starlette.concurrency import run_in_threadpool

from ..api.errors import ApiError
from .index import SORTS, Query
from .service import Gallery, GalleryError

PREFIX = "/easel/v1/images"
SUMMARY_FIELDS = ("id", "path", "prompt", "negative_prompt", "seed", "model", "model_hash", "sampler", "width",
                  "height", "steps", "cfg", "job_id", "created", "favourite", "rating", "board", "tool",
                  "trashed_at")


class Favourite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    favourite: bool


class Rating(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rating: int


class Board(BaseModel):
    model_config = ConfigDict(extra="forbid")
    board: str | None = None


class Bulk(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[int]
    action: str
    board: str | None = None


class BoardName(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


def summary(row: dict[str, Any], full: bool = False) -> dict[str, Any]:
    data = {k: row.get(k) for k in SUMMARY_FIELDS}
    data["thumbnail_url"] = f"{PREFIX}/{row['id']}/thumbnail"
    data["file_url"] = f"{PREFIX}/{row['id']}/file"
    if full:
        data["params"] = row.get("params") or {}
    return data


def build_router(gallery_of) -> APIRouter:
    """`gallery_of()`: the app's Gallery (None when the app runs without one: every route answers 503)."""
    router = APIRouter(prefix=PREFIX, tags=["gallery"])

    def gallery() -> Gallery:
        found = gallery_of()
        if found is None:
            raise ApiError(503, "the gallery is not running")
        return found

    def guarded(call, *args):
        try:
            return call(*args)
        except GalleryError as exc:
            raise ApiError(409, str(exc)) from exc
        except ValueError as exc:
            raise ApiError(422, str(exc)) from exc

    @router.get("")
    async def list_images(q: str = "", model: str | None = None, sampler: str | None = None,
                          board: str | None = None, favourite: bool = False, size: str | None = None,
                          since: float | None = None, until: float | None = None, min_rating: int = 0,
                          trash: bool = False, sort: str = Q("newest", description=", ".join(SORTS)),
                          offset: int = Q(0, ge=0), limit: int = Q(48, ge=1, le=500)):
        """Search the gallery: prompt words (every word, the last as a prefix) and filters; newest first."""
        query = Query(text=q, model=model, sampler=sampler, board=board, favourite=favourite, size=size,
                      since=since, until=until, min_rating=min_rating, trash=trash, sort=sort, offset=offset,
                      limit=limit)
        rows, total = await run_in_threadpool(gallery().search, query)
        return {"images": [summary(r) for r in rows], "total": total, "offset": offset, "limit": limit}

    @router.get("/status")
    def status():
        """How many images are indexed, and the progress of the background scan."""
        return gallery().status()

    @router.post("/scan", status_code=202)
    def scan():
        gallery().scan()
        return gallery().status()

    @router.post("/bulk")
    def bulk(body: Bulk):
        """Select-many: `action` is favourite, unfavourite, board (with `board`), unboard, trash or restore."""
        if len(body.ids) > 10_000:
            raise ApiError(422, "at most 10,000 ids at once")
        return guarded(gallery().bulk, body.ids, body.action, body.board)

    @router.get("/boards")
    def boards():
        return {"boards": gallery().index.boards()}

    @router.post("/boards")
    def add_board(body: BoardName):
        return {"board": guarded(gallery().index.add_board, body.name)}

    @router.delete("/boards/{name}")
    def remove_board(name: str):
        gallery().index.remove_board(name)
        return {"boards": gallery().index.boards()}

    @router.delete("/trash")
    def empty_trash():
        """Delete every image in the trash for good (files and rows); answers how many."""
        return {"deleted": guarded(gallery().empty_trash)}

    @router.get("/{image_id}")
    def get_image(image_id: int):
        row = gallery().index.get(image_id)
        if row is None:
            raise ApiError(404, f"no image with id {image_id}")
        return summary(row, full=True)

    @router.get("/{image_id}/thumbnail")
    async def thumbnail(image_id: int):
        path = await run_in_threadpool(gallery().thumbnail, image_id)
        if path is None:
            raise ApiError(404, f"no image with id {image_id}, or its file cannot be read")
        return FileResponse(path, media_type="image/webp", headers={"Cache-Control": "private, max-age=86400"})

    @router.get("/{image_id}/file")
    def image_file(image_id: int):
        path = gallery().file_of(image_id)
        if path is None:
            raise ApiError(404, f"no image with id {image_id}, or its file is gone")
        return FileResponse(path)

    def changed(image_id: int, call, *args):
        if gallery().index.get(image_id) is None:
            raise ApiError(404, f"no image with id {image_id}")
        guarded(call, *args)
        return summary(gallery().index.get(image_id))

    @router.post("/{image_id}/favourite")
    def favourite(image_id: int, body: Favourite):
        return changed(image_id, gallery().index.set_favourite, image_id, body.favourite)

    @router.post("/{image_id}/rating")
    def rating(image_id: int, body: Rating):
        if not 0 <= body.rating <= 5:
            raise ApiError(422, "rating is 0 to 5")
        return changed(image_id, gallery().index.set_rating, image_id, body.rating)

    @router.post("/{image_id}/board")
    def board(image_id: int, body: Board):
        """Move the image onto a board (made if new), or off any board with null."""
        return changed(image_id, gallery().index.set_board, [image_id], body.board)

    @router.delete("/{image_id}")
    def trash(image_id: int):
        """Move the image to the trash (<data dir>/gallery-trash); restore brings it back."""
        return changed(image_id, gallery().trash, image_id)

    @router.post("/{image_id}/restore")
    def restore(image_id: int):
        return changed(image_id, gallery().restore, image_id)

    return router
