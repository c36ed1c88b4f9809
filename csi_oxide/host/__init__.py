"""The local machine: where its tools are, loop devices, and the small files a process is handed."""
