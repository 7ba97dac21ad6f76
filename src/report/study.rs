//! A study's points: the evaluations scripts/reproduce.sh keeps of a run's checkpoints, one
//! directory each (`RUN/study/iter_NNNNNNN/`, written by `sadajem eval --out`), read back as
//! (epoch, training seconds, headline numbers) for `sadajem compare`'s tables and learning
//! curves. The run directory is read as untrusted, as the report reads it.
use super::html::{self, Number};
use crate::records::eval::Header;
use crate::run::{Metric, RunDir};

/// One evaluated checkpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// The point's directory inside the run (`study/iter_0000429`).
    pub dir: String,
    /// Epochs done and training seconds at the checkpoint.
    pub epoch: u64,
    pub train_seconds: f64,
    pub numbers: Vec<Number>,
}

impl Point {
    /// The value of the number `name`, if this point has it.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.numbers.iter().find(|(n, ..)| n == name).map(|(_, v, _)| *v)
    }
}

/// The header of the first record in the point's directory that has one.
fn header(run: &RunDir, dir: &str) -> Option<Header> {
    Metric::ALL.into_iter().find_map(|m| html::read_json(run, &RunDir::record_inside(dir, m)).and_then(|v| serde_json::from_value(v).ok()))
}

/// The run's study points in training order. A point whose records do not say the epoch and
/// training seconds of their checkpoint (written before sadajem kept them) is left out, with a
/// warning.
pub fn points(run: &RunDir) -> Vec<Point> {
    let mut points: Vec<Point> = run
        .study_points()
        .into_iter()
        .filter_map(|dir| {
            let h = header(run, &dir);
            let Some((epoch, train_seconds)) = h.as_ref().and_then(|h| Some((h.epoch?, h.train_seconds?))) else {
                eprintln!("warning: {}: {dir}: no record says its checkpoint's epoch and training seconds; left out", run.root.display());
                return None;
            };
            let numbers = html::eval_numbers(run, &dir);
            Some(Point { dir, epoch, train_seconds, numbers })
        })
        .collect();
    points.sort_by(|a, b| a.epoch.cmp(&b.epoch).then(a.train_seconds.total_cmp(&b.train_seconds)));
    points
}

/// The names of the numbers any of `points` has (with how each is shown), in order of first
/// appearance.
pub fn names<'a>(points: impl IntoIterator<Item = &'a Point>) -> Vec<(String, html::Shown)> {
    first_appearances(points.into_iter().flat_map(|p| &p.numbers).map(|(name, _, shown)| (name.clone(), *shown)))
}

/// `items` without repeats, each where it first appears: the rows or columns of a table
/// gathered from several runs.
pub fn first_appearances<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut seen: Vec<T> = vec![];
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::eval::examples;

    /// A study point `name` of `run` with an accuracy record of checkpoint (epoch, seconds).
    fn point(run: &RunDir, name: &str, acc: f64, at: Option<(u64, f64)>) {
        let mut record = examples::accuracy(acc);
        (record.header.epoch, record.header.train_seconds) = (at.map(|a| a.0), at.map(|a| a.1));
        let dir = run.study().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("accuracy.json"), serde_json::to_string(&record).unwrap()).unwrap();
    }

    #[test]
    fn points_come_in_training_order_with_their_numbers_and_undated_ones_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("r")).unwrap();
        point(&run, "iter_0000860", 0.8, Some((2, 61.5)));
        point(&run, "iter_0000430", 0.7, Some((1, 30.0)));
        point(&run, "iter_0001290", 0.9, None);
        let got = points(&run);
        assert_eq!(
            got.iter().map(|p| (p.dir.as_str(), p.epoch, p.train_seconds)).collect::<Vec<_>>(),
            [("study/iter_0000430", 1, 30.0), ("study/iter_0000860", 2, 61.5)]
        );
        assert_eq!(got[1].get("test accuracy"), Some(0.8));
        assert_eq!(got[1].get("ECE"), None);
        assert_eq!(names(&got), [("test accuracy".to_string(), html::Shown::Percent)]);
    }

    #[test]
    fn a_record_of_the_wrong_shape_makes_no_point() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(&dir.path().join("r")).unwrap();
        std::fs::create_dir_all(run.study().join("iter_0000010")).unwrap();
        std::fs::write(run.study().join("iter_0000010/accuracy.json"), r#"{"epoch": "two"}"#).unwrap();
        assert!(points(&run).is_empty());
    }
}
