"""The Azure Functions app: one blueprint per DICOMweb service. Nothing connects at import time."""

import azure.functions as func

from functions import changefeed, delete, events, ingest, qido, stow, uploads, wado

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
for blueprint in (stow.bp, wado.bp, qido.bp, delete.bp, changefeed.bp, ingest.bp, uploads.bp, events.bp):
    app.register_functions(blueprint)
