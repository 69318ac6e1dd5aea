"""The long-running ``sendq`` processes, each built from Settings in one module of its own: ``worker`` (the pool
of dramatiq workers and what each child runs), ``web`` (the webhook receiver) and ``scheduler``. Each waits for
the dependencies it cannot start without, brings the store's schema up to date and serves its ops endpoints;
``producers.cli`` only parses the command line and calls them."""
