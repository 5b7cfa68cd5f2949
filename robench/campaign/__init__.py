"""GPU campaigns: one command per GPU window does everything the window can (issue 22.6, plan of issue 23).

- :mod:`robench.campaign.plan` — the plan (``configs/campaign_gpu.toml``): jobs, packs, tasks, and
  :func:`~robench.campaign.plan.train_argv`, the one mapping from members to a ``robench train`` command;
- :mod:`robench.campaign.prepare` — the git-ignored folder a window carries (data, converter, wheels);
- :mod:`robench.campaign.carried_data` — the data it carries: the whole JPEG tarball, or its test split;
- :mod:`robench.campaign.travel` — what a device call sends (≤ 64 MiB) and what the remaining tasks need;
- :mod:`robench.campaign.runner` — the window: wheels, data, preflight, cuda tests, probe, tasks by priority
  within a deadline, files written into ``$OUT`` as they finish;
- :mod:`robench.campaign.probe` — ceilings, the probe and the time estimates;
- :mod:`robench.campaign.outdir` — the returned folder's limits and bundles;
- :mod:`robench.campaign.state` — ``campaign.json`` and the fingerprints of plan, code, data and versions;
- :mod:`robench.campaign.ingest` — CPU verification and installation of what came back.
"""
