"""The page of `deeplab serve` at `/`: try a served model in a browser (`--web_page=false` turns it off).

The page (static HTML, CSS and JavaScript in `serving/static/`, no build step, nothing fetched from elsewhere) sends an
image through the REST API like any client (`POST /v1/models/{name}/versions/{v}:predict`, `serving_default`), lists
versions from `GET /v1/models/{name}` and draws the returned labels as a colour overlay with a legend, each class's
share of the pixels and the latency measured in the browser. The only other route is `GET /page/models.json`
(read-only): the served models, their version folders and, per version, the class names and colours from the
export's info file (`assets.extra/keras_deeplab_export.json`), or "class N" and the PASCAL VOC palette without one.
"""
import json
import logging
from importlib.resources import files

from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from keras_deeplab import viz
from keras_deeplab.serving.contract import EXPORT_INFO_FILE, version_folders

log = logging.getLogger("keras_deeplab.serving")

DEFAULT_COLORMAP = "pascal"
# name -> media type of the files served from serving/static/ (`/` is index.html).
_STATIC_FILES = {"index.html": "text/html; charset=utf-8", "page.js": "text/javascript; charset=utf-8",
                 "page.css": "text/css; charset=utf-8"}
# Everything the page loads comes from this server: no other origin, no inline script or style.
_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' blob:; object-src 'none'; "
                                       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def _read_info(version_dir):
    """The export's info file as a dict; {} when it is missing, unreadable or not a JSON object (logged)."""
    path = version_dir / EXPORT_INFO_FILE
    if not path.is_file():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        log.warning("page: cannot read %s: %s", path, error)
        return {}
    return info if isinstance(info, dict) else {}


def version_legend(info):
    """What the page draws a version's labels with, from its export info (a dict, {} without one):
    `num_classes` (None when unknown), `class_names` (the info's, else "class N"; None when the number of classes
    is unknown), `colormap` (the palette's name) and `colors` (256 [r, g, b], indexed by label). Names or a
    colormap that do not fit are replaced by the defaults, with a `note` saying why."""
    notes = []
    num_classes = info.get("num_classes")
    if not (isinstance(num_classes, int) and num_classes > 0):
        num_classes = None
    names = info.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == num_classes):
        notes.append(f"class_names ignored: expected a list of num_classes ({num_classes}) names")
        names = None
    if names is None and num_classes is not None:
        names = [f"class {i}" for i in range(num_classes)]
    colormap = info.get("colormap")
    if colormap is not None and colormap not in viz.COLORMAPS:
        notes.append(f"unknown colormap {colormap!r} (known: {', '.join(viz.COLORMAPS)})")
        colormap = None
    colormap = colormap or DEFAULT_COLORMAP
    legend = {"num_classes": num_classes, "class_names": None if names is None else [str(n) for n in names],
              "colormap": colormap, "colors": viz.get_colormap(colormap).tolist()}
    if notes:
        legend["note"] = "; ".join(notes)
    return legend


def models_listing(manager):
    """The body of `/page/models.json`: {"models": [{"name", "versions": {version: version_legend}}]}, each model's
    version folders as found on disk now (their serving state comes from the REST status)."""
    models = []
    for name, model in sorted(manager.models.items()):
        folders = version_folders(model.config.base_path)
        versions = {str(v): version_legend(_read_info(folders[v])) for v in sorted(folders, reverse=True)}
        models.append({"name": name, "versions": versions})
    return {"models": models}


def page_routes(manager):
    """Starlette GET routes of the page: `/` (index.html), `/page/page.js`, `/page/page.css` and
    `/page/models.json` for the models of a `ModelManager`."""
    folder = files("keras_deeplab.serving.static")
    contents = {name: (folder / name).read_bytes() for name in _STATIC_FILES}

    def static(name):
        async def endpoint(request):
            return Response(contents[name], media_type=_STATIC_FILES[name], headers=_HEADERS)
        return endpoint

    def models_json(request):  # reads files: Starlette runs a plain function in its thread pool
        return JSONResponse(models_listing(manager), headers=_HEADERS)

    return [Route("/", static("index.html"), methods=["GET"]),
            Route("/page/page.js", static("page.js"), methods=["GET"]),
            Route("/page/page.css", static("page.css"), methods=["GET"]),
            Route("/page/models.json", models_json, methods=["GET"])]
