"""What is computed: the frozen backbone and its towers' entry points, request checks, the
device queue that runs every tensor operation, and the graphs held between Forward and Backward."""
