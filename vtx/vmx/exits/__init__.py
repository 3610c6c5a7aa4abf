"""VM exits: which guest operations exit, with which reason, qualification and information.

:mod:`.causes` loads ``spec/vmx/exit_causes.toml``, :mod:`.layouts` the exit-information formats,
:mod:`.rules` decides (:func:`~.rules.decide`), :mod:`.info` holds the exit-information record
and :mod:`.minimal` the minimal-exit VMCS.
"""
