"""A small host project, written for the tests: its own CLIP in OpenAI's ``clip`` layout and its own
CoOp-style Dassl trainers, which CasPL must serve without any change to them."""
