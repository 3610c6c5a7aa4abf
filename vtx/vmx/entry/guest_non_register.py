"""Checks on guest non-register state and PDPTEs (SDM Vol. 3C §28.3.1.5 "Checks on Guest Non-Register
State", §28.3.1.6 "Checks on Guest Page-Directory-Pointer-Table Entries"); exit reason 33."""
