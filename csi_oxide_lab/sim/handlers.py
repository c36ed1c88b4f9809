"""One function per served operation: read the parsed request, apply it to the state, answer.

Each handler runs with the simulator's lock held and returns ``(status, JSON body or None)``;
refusals are raised as ``ApiError``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from csi_oxide_lab.sim import parse
from csi_oxide_lab.sim.model import SimState
from csi_oxide_lab.sim.paging import Scan, page, parse_scan
from csi_oxide_lab.sim.records import DiskRecord, JsonObject, rfc3339
from csi_oxide_lab.sim.spec import DiskState


@dataclass(frozen=True, slots=True)
class Call:
    """A routed request: path parameters, query (first value of each key) and raw body."""

    path: Mapping[str, str]
    query: Mapping[str, str]
    body: bytes


Reply = tuple[int, JsonObject | None]
Handler = Callable[[SimState, Call], Reply]


def _project_query(call: Call) -> str | None:
    return parse.optional_query(call.query, "project")


def _path(call: Call, key: str) -> str:
    return parse.name_or_id(call.path[key], f"path parameter {key!r}")


def _disk_page(state: SimState, disks: list[DiskRecord], scan: Scan) -> Reply:
    items, next_page = page(disks, scan, name=lambda d: d.name, ident=lambda d: d.id)
    body: JsonObject = {
        "items": [d.to_json(state.project_id) for d in items],
        "next_page": next_page,
    }
    return 200, body


def _scan_with_project(state: SimState, call: Call) -> Scan:
    scan = parse_scan(call.query, project_required=True)
    state.check_project(parse.name_or_id(scan.project or "", "query parameter 'project'"))
    return scan


# ---- disks ----


def disk_list(state: SimState, call: Call) -> Reply:
    """GET /v1/disks"""
    scan = _scan_with_project(state, call)
    return _disk_page(state, list(state.disks.values()), scan)


def disk_create(state: SimState, call: Call) -> Reply:
    """POST /v1/disks: 201 with the record as first inserted, so its state reads ``creating``."""
    state.check_project(parse.required_query(call.query, "project"))
    data = parse.json_body(call.body)
    name, description = parse.name(data), parse.description(data)
    size = parse.integer(data, "size")
    disk = state.create_disk(name, description, size, parse.disk_source(data))
    return 201, disk.to_json(state.project_id, state=DiskState.CREATING)


def disk_view(state: SimState, call: Call) -> Reply:
    """GET /v1/disks/{disk}"""
    disk = state.disk(_path(call, "disk"), _project_query(call))
    return 200, disk.to_json(state.project_id)


def disk_delete(state: SimState, call: Call) -> Reply:
    """DELETE /v1/disks/{disk}"""
    state.delete_disk(state.disk(_path(call, "disk"), _project_query(call)))
    return 204, None


# ---- snapshots ----


def snapshot_list(state: SimState, call: Call) -> Reply:
    """GET /v1/snapshots"""
    scan = _scan_with_project(state, call)
    snaps = list(state.snapshots.values())
    items, next_page = page(snaps, scan, name=lambda s: s.name, ident=lambda s: s.id)
    return 200, {"items": [s.to_json(state.project_id) for s in items], "next_page": next_page}


def snapshot_create(state: SimState, call: Call) -> Reply:
    """POST /v1/snapshots: synchronous, the snapshot is ``ready`` in the 201."""
    state.check_project(parse.required_query(call.query, "project"))
    data = parse.json_body(call.body)
    name, description = parse.name(data), parse.description(data)
    disk_ref = parse.name_or_id(parse.text(data, "disk"), "JSON body: disk")
    snap = state.create_snapshot(name, description, state.disk_in_project(disk_ref))
    return 201, snap.to_json(state.project_id)


def snapshot_view(state: SimState, call: Call) -> Reply:
    """GET /v1/snapshots/{snapshot}"""
    snap = state.snapshot(_path(call, "snapshot"), _project_query(call))
    return 200, snap.to_json(state.project_id)


def snapshot_delete(state: SimState, call: Call) -> Reply:
    """DELETE /v1/snapshots/{snapshot}"""
    state.delete_snapshot(state.snapshot(_path(call, "snapshot"), _project_query(call)))
    return 204, None


# ---- images ----


def image_list(state: SimState, call: Call) -> Reply:
    """GET /v1/images: the project's images with ``project``, else the silo's."""
    scan = parse_scan(call.query, project_required=False)
    project = None if scan.project is None else parse.name_or_id(scan.project, "project")
    images = state.list_images(project)
    items, next_page = page(images, scan, name=lambda i: i.name, ident=lambda i: i.id)
    return 200, {"items": [i.to_json() for i in items], "next_page": next_page}


def image_create(state: SimState, call: Call) -> Reply:
    """POST /v1/images: with ``project`` a project image, without it a silo image."""
    project = _project_query(call)
    if project is not None:
        state.check_project(project)
    new = parse.new_image(parse.json_body(call.body), project=project is not None)
    return 201, state.create_image(new).to_json()


def image_view(state: SimState, call: Call) -> Reply:
    """GET /v1/images/{image}"""
    return 200, state.image(_path(call, "image"), _project_query(call)).to_json()


def image_delete(state: SimState, call: Call) -> Reply:
    """DELETE /v1/images/{image}"""
    state.delete_image(state.image(_path(call, "image"), _project_query(call)))
    return 204, None


def image_promote(state: SimState, call: Call) -> Reply:
    """POST /v1/images/{image}/promote: a project image becomes the silo's (202)."""
    image = state.image(_path(call, "image"), _project_query(call))
    return 202, state.promote(image).to_json()


def image_demote(state: SimState, call: Call) -> Reply:
    """POST /v1/images/{image}/demote?project=: a silo image becomes that project's (202);
    ``project`` names the target, the image is looked up among the silo's."""
    project = parse.required_query(call.query, "project")
    image = state.image(_path(call, "image"), None)  # the image is the silo's: no project
    return 202, state.demote(image, project).to_json()


# ---- instances ----


def instance_list(state: SimState, call: Call) -> Reply:
    """GET /v1/instances"""
    scan = _scan_with_project(state, call)
    items, next_page = page(
        list(state.all_instances()), scan, name=lambda i: i.name, ident=lambda i: i.id
    )
    return 200, {"items": [i.to_json(state.project_id) for i in items], "next_page": next_page}


def instance_view(state: SimState, call: Call) -> Reply:
    """GET /v1/instances/{instance}"""
    inst = state.instance(_path(call, "instance"), _project_query(call))
    return 200, inst.to_json(state.project_id)


def instance_start(state: SimState, call: Call) -> Reply:
    """POST /v1/instances/{instance}/start: 202 ``starting``; ``running`` from the next read."""
    inst = state.instance(_path(call, "instance"), _project_query(call))
    return 202, state.start(inst).to_json(state.project_id)


def instance_stop(state: SimState, call: Call) -> Reply:
    """POST /v1/instances/{instance}/stop: 202 ``stopping``; ``stopped`` from the next read."""
    inst = state.instance(_path(call, "instance"), _project_query(call))
    return 202, state.stop(inst).to_json(state.project_id)


def instance_disk_list(state: SimState, call: Call) -> Reply:
    """GET /v1/instances/{instance}/disks"""
    scan = parse_scan(call.query, project_required=False)
    project = None if scan.project is None else parse.name_or_id(scan.project, "project")
    inst = state.instance(_path(call, "instance"), project)
    return _disk_page(state, state.instance_disks(inst), scan)


def _disk_for(state: SimState, call: Call) -> tuple[str, str]:
    data = parse.json_body(call.body)
    return _path(call, "instance"), parse.name_or_id(parse.text(data, "disk"), "JSON body: disk")


def instance_disk_attach(state: SimState, call: Call) -> Reply:
    """POST /v1/instances/{instance}/disks/attach: 202 with the disk ``attached``."""
    inst_ref, disk_ref = _disk_for(state, call)
    inst = state.instance(inst_ref, _project_query(call))
    disk = state.attach(inst, state.disk_in_project(disk_ref))
    return 202, disk.to_json(state.project_id)


def instance_disk_detach(state: SimState, call: Call) -> Reply:
    """POST /v1/instances/{instance}/disks/detach: 202 with the disk ``detached``."""
    inst_ref, disk_ref = _disk_for(state, call)
    inst = state.instance(inst_ref, _project_query(call))
    disk = state.detach(inst, state.disk_in_project(disk_ref))
    return 202, disk.to_json(state.project_id)


# ---- silo and project ----


def utilization_view(state: SimState, call: Call) -> Reply:
    """GET /v1/utilization"""
    return 200, state.utilization()


def project_view(state: SimState, call: Call) -> Reply:
    """GET /v1/projects/{project}"""
    state.check_project(_path(call, "project"))
    created = rfc3339(state.project_created)
    return 200, {
        "id": state.project_id,
        "name": state.project_name,
        "description": "the simulated project",
        "time_created": created,
        "time_modified": created,
    }


ROUTES: tuple[tuple[str, str, str, Handler], ...] = (
    ("GET", "/v1/disks", "disk_list", disk_list),
    ("POST", "/v1/disks", "disk_create", disk_create),
    ("GET", "/v1/disks/{disk}", "disk_view", disk_view),
    ("DELETE", "/v1/disks/{disk}", "disk_delete", disk_delete),
    ("GET", "/v1/snapshots", "snapshot_list", snapshot_list),
    ("POST", "/v1/snapshots", "snapshot_create", snapshot_create),
    ("GET", "/v1/snapshots/{snapshot}", "snapshot_view", snapshot_view),
    ("DELETE", "/v1/snapshots/{snapshot}", "snapshot_delete", snapshot_delete),
    ("GET", "/v1/images", "image_list", image_list),
    ("POST", "/v1/images", "image_create", image_create),
    ("GET", "/v1/images/{image}", "image_view", image_view),
    ("DELETE", "/v1/images/{image}", "image_delete", image_delete),
    ("POST", "/v1/images/{image}/promote", "image_promote", image_promote),
    ("POST", "/v1/images/{image}/demote", "image_demote", image_demote),
    ("GET", "/v1/instances", "instance_list", instance_list),
    ("GET", "/v1/instances/{instance}", "instance_view", instance_view),
    ("POST", "/v1/instances/{instance}/start", "instance_start", instance_start),
    ("POST", "/v1/instances/{instance}/stop", "instance_stop", instance_stop),
    ("GET", "/v1/instances/{instance}/disks", "instance_disk_list", instance_disk_list),
    (
        "POST",
        "/v1/instances/{instance}/disks/attach",
        "instance_disk_attach",
        instance_disk_attach,
    ),
    (
        "POST",
        "/v1/instances/{instance}/disks/detach",
        "instance_disk_detach",
        instance_disk_detach,
    ),
    ("GET", "/v1/utilization", "utilization_view", utilization_view),
    ("GET", "/v1/projects/{project}", "project_view", project_view),
)
