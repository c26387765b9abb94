"""Events: a timer that publishes what the change feed still holds unpublished, then announces the
studies that have been quiet for the configured period (`DICOMWEB_STUDY_QUIET_SECONDS`).

The change feed is the source of truth: events that could not be published after a request (queue
down, process stopped) are published here, at the latest a minute later. A failure raises, so the
Functions host records it; the next run tries again.
"""

from __future__ import annotations

import logging

import azure.functions as func

from shared.bootstrap import get_app

bp = func.Blueprint()
log = logging.getLogger(__name__)


@bp.timer_trigger(schedule="0 */1 * * * *", arg_name="timer", run_on_startup=False, use_monitor=False)
def publish_events(timer: func.TimerRequest) -> None:
    app = get_app()
    published = app.publisher.publish_pending()
    announced = app.publisher.announce_stable_studies(app.settings.study_quiet_seconds)
    if published or announced or timer.past_due:
        log.info(
            "events: %d published, %d studies stable (past due: %s)", published, announced, timer.past_due
        )
