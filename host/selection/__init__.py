"""Selection: entropy, the criteria, the rules, the linear probe and the study."""
