/* Sum of (rank + 1) over all ranks, computed with MPI_Allreduce and checked by rank 0
 * against n(n+1)/2; the exit status says whether every rank got the right sum. */
#include <mpi.h>
#include <stdio.h>

int main(int argc, char **argv) {
    int rank, size;
    long mine, total = 0, bad, anybad = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    mine = rank + 1;
    MPI_Allreduce(&mine, &total, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    bad = total != (long)size * (size + 1) / 2;
    MPI_Reduce(&bad, &anybad, 1, MPI_LONG, MPI_SUM, 0, MPI_COMM_WORLD);
    if (rank == 0)
        printf("allreduce size=%d sum=%ld expected=%ld ok=%s\n", size, total,
               (long)size * (size + 1) / 2, anybad ? "no" : "yes");
    MPI_Finalize();
    return anybad ? 1 : 0;
}
