"""Runtime profiles (the software that runs the model) and the weight formats they store; bundled profiles in
bundled/*.yaml (`simmoe runtimes`)."""
