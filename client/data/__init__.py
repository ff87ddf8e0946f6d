"""What every task's data needs: data set files read row by row with their line numbers,
images preprocessed as the backbone expects, and the offline demo set."""
