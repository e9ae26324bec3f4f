"""Open and click tracking: signed tokens (``tokens``), the HTML edits made before DKIM signing (``html``,
``prepare``), who is a machine (``machine``) and the listener that answers the pixel (``listener``)."""
