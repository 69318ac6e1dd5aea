"""Campaigns: one template to many recipients, stored in batches and expanded into messages at the senders' pace.

A campaign is a row in ``campaigns`` and its recipients are rows in ``campaign_recipients``, each validated and
rendered once, while the producer streams them in (duplicates fall to a unique key). Nothing else happens at
creation: an expander job (:func:`~worker.campaigns.expander.expand_campaign`) turns recipients into ``messages``
rows a page at a time, keeping each campaign's backlog of ``queued`` messages near a window of a few seconds of
its senders' rate. That keeps Redis small for a million recipients and shares a sender fairly: campaigns on the
same sender each keep the same window in one FIFO queue, so each gets an equal part of its rate, and urgent
messages (another queue, the limiter's urgent share) still go first.

Message ids are derived from (campaign, recipient), so an expander that runs twice for the same page inserts
nothing twice. Pausing takes the queued messages away from their jobs (the job number moves on, so a job that
wakes up cannot claim them); resuming hands them to new jobs and restarts the expander where it stopped.
Cancelling finalizes every message not yet handed to Telnyx as ``cancelled``; recipients never expanded are
counted as cancelled too.

The modules, from the bottom up: :mod:`~worker.campaigns.rows` (the template and each row's checks),
:mod:`~worker.campaigns.store` (the campaign's statuses and every SQL statement on its tables),
:mod:`~worker.campaigns.pacing` (how many messages to create now), :mod:`~worker.campaigns.control` (progress,
pause, resume, cancel) and :mod:`~worker.campaigns.expander` (one tick of the expander). Nothing here enqueues:
the expander and resume return a :class:`~worker.campaigns.control.Work` that the caller hands to
:meth:`worker.actors.Actors.enqueue_campaign_work`, which keeps the fallback of a failed enqueue.
"""
