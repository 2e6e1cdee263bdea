# C type names shared by every kernel (scikit-learn style): one place to change them.
from libc.stdint cimport int64_t, int32_t, uint8_t

ctypedef double float64_t      # energies, probabilities, messages
ctypedef float float32_t       # stored weights and accumulators where half the memory pays
ctypedef int64_t intp_t        # indices and offsets (numpy int64 on the Python side)
ctypedef uint8_t bool_t        # masks (numpy uint8 / bool viewed as uint8)
