"""``/v1/fine_tuning/alpha/graders/validate`` and ``/run``: OpenAI's graders, tried on their own.

The route checks the grader (``graders.check``: a 400 naming the field) and runs it on the given
sample (``graders.run``); judges are this server's models (``graders.judges``).
"""

from __future__ import annotations

from fastapi import APIRouter

from selftune.graders import template
from selftune.graders.check import check, judges
from selftune.graders.judges import context
from selftune.graders.run import grade
from selftune.schemas.graders import RunGraderRequest, RunGraderResponse, ValidateGraderRequest, ValidateGraderResponse
from selftune.server.deps import OwnerDep, ServicesDep
from selftune.server.edge import Route

router = APIRouter(tags=["graders"], route_class=Route)


@router.post("/fine_tuning/alpha/graders/validate")
def validate_grader(body: ValidateGraderRequest, services: ServicesDep, owner: OwnerDep) -> ValidateGraderResponse:
    check(body.grader, judges(services.catalog, owner))
    return ValidateGraderResponse(grader=body.grader.model_dump(exclude_none=True))


@router.post("/fine_tuning/alpha/graders/run")
async def run_grader(body: RunGraderRequest, services: ServicesDep, owner: OwnerDep) -> RunGraderResponse:
    check(body.grader, judges(services.catalog, owner))
    sample = template.sample_namespace(body.model_sample)
    graded = await grade(body.grader, sample, body.item or {}, context(services, owner))
    return graded.response()
