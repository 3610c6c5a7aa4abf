"""AMD-V (SVM): the VMCB, VMRUN and its checks, intercepts and exit codes (AMD APM Vol. 2 chapter 15)."""
