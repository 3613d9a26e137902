//! Operations on ascending lists: what joins and what leaves between two of them.
use alloc::vec::Vec;

/// (in `new` but not `old`, in `old` but not `new`), both inputs ascending
/// without duplicates; one merge pass, each result ascending. Not generic, so
/// it is compiled here, untraced, and not in the kernel crate.
pub fn difference(new: &[usize], old: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let (mut added, mut removed) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    loop {
        match (new.get(i), old.get(j)) {
            (Some(a), Some(b)) if a == b => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                added.push(*a);
                i += 1;
            }
            (Some(a), None) => {
                added.push(*a);
                i += 1;
            }
            (_, Some(b)) => {
                removed.push(*b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn disjoint_lists_add_all_new_and_remove_all_old() {
        assert_eq!(difference(&[1, 4, 9], &[2, 3, 10]), (vec![1, 4, 9], vec![2, 3, 10]));
        assert_eq!(difference(&[5, 6], &[1, 2]), (vec![5, 6], vec![1, 2]));
    }

    #[test]
    fn equal_lists_change_nothing() {
        assert_eq!(difference(&[1, 2, 3], &[1, 2, 3]), (vec![], vec![]));
    }

    #[test]
    fn a_subset_removes_the_rest() {
        assert_eq!(difference(&[2, 5], &[1, 2, 3, 5, 8]), (vec![], vec![1, 3, 8]));
    }

    #[test]
    fn a_superset_adds_the_rest() {
        assert_eq!(difference(&[0, 1, 2, 3, 7], &[1, 3]), (vec![0, 2, 7], vec![]));
    }

    #[test]
    fn empty_lists() {
        assert_eq!(difference(&[], &[]), (vec![], vec![]));
        assert_eq!(difference(&[4, 6], &[]), (vec![4, 6], vec![]));
        assert_eq!(difference(&[], &[4, 6]), (vec![], vec![4, 6]));
    }

    #[test]
    fn overlapping_lists_agree_with_a_set_difference() {
        let new = [1, 3, 4, 6, 10, 11];
        let old = [0, 3, 5, 6, 11, 12, 13];
        let (added, removed) = difference(&new, &old);
        let expected_added: Vec<usize> = new.iter().copied().filter(|x| !old.contains(x)).collect();
        let expected_removed: Vec<usize> = old.iter().copied().filter(|x| !new.contains(x)).collect();
        assert_eq!((added, removed), (expected_added, expected_removed));
    }
}
