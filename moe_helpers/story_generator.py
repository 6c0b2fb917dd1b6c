"""Generate simple children's stories in the style of TinyStories, fully offline.

TinyStories (Eldan & Li, 2023) is a data set of short stories that use only words a
three-year-old understands; the course trains its small language models on it. When the
Hugging Face hub cannot be reached (an offline classroom, a CI machine), the notebooks
train on the stories from this module instead. Every story is built from hand-written
sentence templates and word lists with the Python standard library only: a named main
character, a setting, a small problem, some dialogue and a happy ending, following one of
ten plot shapes. The stories depend only on the seed, so every machine gets the same corpus.

Honest note: this is a generated stand-in, NOT the real TinyStories data set. It has far
less variety than the real stories, so losses and perplexities measured on it are NOT
comparable to published TinyStories numbers. Use it to watch the training code work.
"""

import random
import re
from functools import lru_cache

OFFLINE_NOTICE = ("This is a generated stand-in for TinyStories, not the real dataset, so its losses "
                  "are not comparable to published TinyStories numbers.")

TRAIN_SEED, VALIDATION_SEED = 2023, 7_777_777
TRAIN_CHARS = 1_500_000                 # about 1.5 MB of text
VALIDATION_CHARS = TRAIN_CHARS // 20    # about 5% of the training split
SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation"}


def _words(text):
    """Split a '|'-separated string into a tuple of words or phrases."""
    return tuple(" ".join(word.split()) for word in text.split("|") if word.strip())


def _rows(text):
    """Split lines of '|'-separated fields into a tuple of rows (one table row per line)."""
    return tuple(_words(line) for line in text.strip().splitlines())


# ------------------------------------------------------------------------------ word lists
GIRL_NAMES = _words("""Lily|Mia|Emma|Sue|Anna|Lucy|Sara|Amy|Ella|Zoe|Ruby|Rosie|Daisy|Molly|Chloe|Grace|
Ava|Olivia|Sophie|Hannah|Maya|Nora|Ivy|Lila|Jenny|Kate|Jane|Bella|Clara|Alice|Holly|Poppy|Stella|Luna|Hazel|
Iris|Julia|Nina|Tina|Rita|Megan|Amber|Elsa|Leah|Piper|Willow|Violet|Eva|Fiona|Gina|Heidi|Isla|Jade|Kara|Laura|
Maria|Naomi|Penny|Rosa|Tara|Wendy|Abby|Bonnie|Cora|Dora|Flora|Gemma|Hope|Joy|Kim|Lola|Mabel|Nell|Pearl|Sadie|
Tess|Vera|Zara|Aisha|Priya|Mei|Yuki|Amara|Fatima|Lina|Sofia|Camila|Nia|Beth|Jill""")
BOY_NAMES = _words("""Tom|Ben|Max|Sam|Jack|Leo|Tim|Joe|Jake|Finn|Noah|Liam|Oliver|Henry|Charlie|Ollie|Theo|
Luke|Ryan|Adam|Alex|Owen|Eli|Evan|Felix|George|Harry|Ian|Jamie|Kai|Leon|Mark|Nate|Oscar|Paul|Ray|Rob|Seth|Ted|
Toby|Victor|Will|Zack|Bobby|Billy|Danny|Eddie|Frank|Gabe|Hugo|Ivan|Jonah|Kevin|Lenny|Milo|Ned|Otto|Pete|Rory|
Sid|Timmy|Ricky|Arlo|Ezra|Jude|Omar|Ravi|Kenji|Mateo|Diego|Ali|Kofi|Amir|Sami|Louis|Jasper|Silas|Hank|Tyler|
Dylan|Caleb|Bruno|Carlos|Dev""")
PET_NAMES = _words("""Spot|Buddy|Coco|Pip|Fluffy|Mittens|Whiskers|Patch|Biscuit|Muffin|Peanut|Pepper|Ziggy|
Bubbles|Rusty|Snowy|Sunny|Bingo|Tiny|Fuzzy|Lucky|Benny|Honey|Cookie|Sparky|Hoppy|Nibbles|Bolt|Button|Dot|Jelly|
Oreo|Pickles|Shadow|Socks|Tofu|Waffles|Ginger|Cocoa|Scout|Pebble|Bramble|Clover|Puddles|Squeak|Toffee|Noodle|Bean""")
ANIMALS = _words("""dog|cat|bunny|bear|bird|duck|fox|mouse|owl|frog|pig|lamb|puppy|kitten|squirrel|turtle|
hedgehog|goat|calf|pony|chick|elephant|otter|lion|tiger|monkey|penguin|deer|
raccoon|chicken|goose|koala|panda|giraffe|zebra""")
ANIMAL_ADJECTIVES = _words("little|small|happy|curious|friendly|playful|young|sleepy|silly|cheerful|gentle|clever")
TRAITS = _words("kind|happy|curious|cheerful|friendly|clever|playful|gentle|silly|busy|sweet|shy|funny")
HELPERS = tuple(tuple(entry.split()) for entry in _words("""mom Mom she|dad Dad he|mommy Mommy she|daddy Daddy he|
grandma Grandma she|grandpa Grandpa he|granny Granny she|nana Nana she|papa Papa he|
aunt Auntie she|uncle Uncle he"""))
PRONOUNS = {"he": ("he", "him", "his"), "she": ("she", "her", "her")}
BREAKABLE_TOYS = _words("""toy car|toy train|robot|drum|toy boat|toy plane|truck|toy dinosaur|rocket|spinning top|
yo-yo|music box|wagon|tea set|flute|toy horse|fire truck|crown|magic wand|snow globe|sailboat|race car|tractor|
helicopter|xylophone|toy piano|toy guitar|flashlight|bubble wand|toy bus|toy castle|kite|doll|rocking horse|
pinwheel|kaleidoscope|windmill|airplane""")
SOFT_TOYS = _words("""ball|teddy bear|jump rope|bucket|shovel|hat|scarf|crayon|marble|book|ribbon|bell|rubber duck|
stuffed bunny|paintbrush|balloon|cape|backpack|lunch box|sticker book|coloring book|sock puppet|treasure box|
pet rock|bouncy ball|blanket|pillow|necklace|bracelet|umbrella|toy elephant|stuffed owl|beanbag frog""")
TOYS = BREAKABLE_TOYS + SOFT_TOYS
FOODS = _words("""apple|cookie|banana|sandwich|cupcake|muffin|orange|pear|peach|carrot|pancake|cracker|plum|
strawberry|cake|donut|pretzel|ice cream cone|lollipop|cheese stick|granola bar|bowl of berries|slice of pizza|
piece of pie|juice box|honey bun|waffle|bagel""")
COLOURS = _words("red|blue|green|yellow|pink|purple|orange|white|black|brown|gold|silver")
BAD_FEELINGS = _words("sad|upset|worried|unhappy|grumpy|gloomy")
GOOD_FEELINGS = _words("happy|proud|glad|excited|cheerful|joyful")
OUTDOOR_PLACES = _words("""the park|the beach|the zoo|the farm|the forest|the lake|the garden|the playground|
the river|the hill|the meadow|the pond|the field|the woods|the backyard|the orchard|the pumpkin patch|
the campsite|the mountain|the duck pond|the fair""")
PLACES = OUTDOOR_PLACES + _words("""the library|the toy store|the bakery|the museum|the school|the market|
the aquarium|the circus|the pet shop|the ice rink|the train station|the swimming pool|the flower shop|
the candy store|the harbor|the puppet show|the old castle""")
PERSON_HOMES = _words("""a small house near the woods|a big red house on a hill|a little town by the sea|
a busy city|a quiet village|a farm with a big red barn|a cozy house with a blue door|a yellow house by the river|
a tiny cottage in the forest|an old house with a big garden|a tall building in the city|a white house near the
beach|a sunny town with many trees|a little house at the end of a long road|a green house next to a park|
a small village in the mountains|a pink house with a round window|a house with a big apple tree""")
ANIMAL_HOMES = _words("""a cozy den in the woods|a big barn on a farm|a hole under an old oak tree|a green field
by the pond|a warm basket in a kitchen|a garden full of flowers|a quiet corner of the forest|a little house
with a kind family|a sunny meadow near a river|a snug burrow under a hill|a busy farm full of animals""")
SPOTS = _words("""under the bed|behind the couch|in the toy box|under a big leaf|in the tall grass|behind a tree|
in the sandbox|under the table|inside a boot|next to the door|under a pile of leaves|in the laundry basket|
on top of the bookshelf|behind the curtains|under the slide|by the garden gate|inside a flower pot|under a
blanket|in the car|behind a big rock|under the stairs|in the kitchen drawer|under the porch|in the bathtub""")
GAMES = _words("tag|hide-and-seek|catch|hopscotch|leapfrog|dress-up|follow the leader|house|chase|pirates|school")
HOBBIES = _words("""sing songs|draw pictures|run in the grass|look at the clouds|build sand castles|dance in the
kitchen|read picture books|splash in puddles|pick flowers|count the stars|blow bubbles|watch the birds|make mud
pies|climb trees|help in the garden|bake cookies|collect shiny rocks|play music|chase butterflies|roll down
hills|paint with bright colors|look for bugs|tell jokes|play in the sand|ride in the wagon""")
SIGHTS = _words("""a big {colour} balloon floating up|a mother duck with six little ducklings|a man playing a
happy song on a guitar|a tall tree full of singing birds|{a_animal} taking a nap in the sun|a pretty butterfly
with {colour} wings|a giant pile of leaves|a long train going choo-choo|a field of yellow flowers|a boat with a
white sail|a squirrel carrying a nut|a kite shaped like a fish|a frog sitting on a lily pad|a bunny hopping in
the grass|a rainbow in the spray of a fountain|a big {colour} tractor|a snail with a swirly shell|an old man
feeding the pigeons|a girl blowing giant bubbles|a dog chasing its tail|a cloud shaped like a dragon""")
WHENS = _words("""One day|One morning|One afternoon|One Saturday|One Sunday morning|Early one morning|
Later that week|After breakfast one day|On a Monday|One evening""")

# ------------------------------------------------- plot tables: one row per line, fields split by "|"
# Each story draws one row from every table; the fields become the template slots named in STORY_TABLES.
FEARS = _rows("""the dark|look around the dark room|the scary shape was only {his} coat on a chair
the big slide|climb up the big slide and slide down|the slide was fast and fun
thunder|sit by the window during the storm|the thunder was only a loud noise far away
deep water|put {his} feet in the lake|the water was cool and nice
the big dog next door|say hello to the big dog|the dog only wanted to play
the loud vacuum|watch the vacuum clean the floor|the vacuum was just a noisy machine that ate dust
the tall ladder|climb the tall ladder to the tree house|the view from the top was wonderful
the doctor|sit in the big chair at the doctor's office|the doctor was kind and gave {him} a sticker
the shadows on the wall|look closely at the shadows|the shadows were only the branches of a tree
bees|walk through the flower garden|the bees were busy with the flowers and did not care about {him}
the ocean waves|walk into the waves|the waves only tickled {his} toes
the big yellow bus|get on the big yellow bus|the bus was full of friendly kids""")
NEEDS = _rows("""
a little bird|the bird|had a hurt wing|made a soft bed in a box for it|the bird got well and flew away
a kitten up in a tree|the kitten|was stuck and could not get down|held up a ladder for it|the kitten purred
an old man|the old man|had dropped his apples on the road|picked up every apple|the old man gave {him} an apple
{his} friend {friend}|{friend}|had {friend_his} kite stuck in a tree|poked the kite free with a stick|{friend} cheered
a tiny puppy|the puppy|had lost its way home|read its collar and walked it home|the puppy was safe
a turtle|the turtle|was stuck on its back|gently turned the turtle over|the turtle walked back to the pond
a little duck|the duck|was caught in an old fishing net|untied the net bit by bit|the duck swam to its mother
a lady with many bags|the lady|could not carry all her heavy bags|carried two bags to her car|the lady said thank you
a baby bird|the baby bird|had fallen out of its nest|put the baby bird back in its nest|the mother bird sang
the flowers in the garden|the flowers|were dry and droopy|gave every flower a drink|the flowers stood up tall""")
SKILLS = _rows("""ride a bike|wobbled and fell down on the grass|rode all the way down the street
tie {his} shoes|made a big knot instead of a bow|tied a perfect bow
swim|splashed and sank and had to grab the side of the pool|swam from one side of the pool to the other
jump rope|got the rope stuck on {his} feet|jumped ten times in a row
whistle|only made a funny puff of air|whistled a happy little song
fly a kite|watched the kite crash into the grass|made the kite dance high in the sky
read a book|got stuck on the long words|read a whole story out loud
bake cookies|made the dough much too sticky|baked a tray of warm, yummy cookies
catch a ball|dropped the ball again and again|caught the ball with both hands
build a tall tower of blocks|watched the tower fall over|built a tower taller than {him}self
draw a horse|drew a horse that looked like a potato|drew a horse with a long, shiny tail
skate|slipped and sat down with a bump|skated around the whole rink
climb the big tree|slid back down to the ground|climbed up to the first big branch""")
MISTAKES = _rows("""knocked {owner_his} favorite cup off the table, and it broke|helper
spilled red juice all over {owner_his} nice white rug|helper
broke {owner_his} pretty flower pot|helper
got mud all over {owner_his} clean kitchen floor|helper
ate the last cookie that {owner} was saving|helper
stepped on {owner_his} sand castle and squashed it flat|friend
tore a page in {owner_his} new picture book|friend
ripped {owner_his} drawing by accident|friend
let go of {owner_his} balloon, and it floated away|friend
broke the wheel off {owner_his} toy truck|friend""")
WEATHERS = _rows("""it started to rain|put on rain boots and jumped in every puddle|a bright rainbow came out
snow began to fall|built a snowman with a carrot nose|the snowman stood proud in the yard
a big storm came|built a fort out of blankets and told stories inside|the storm passed and the stars came out
the wind blew very hard|made paper boats and watched the wind push them|the wind grew soft again
it was much too hot to play outside|splashed in a little pool of cool water|the air was cool again
thick fog covered everything|played a guessing game about shapes in the fog|the sun came out""")
STORY_TABLES = {
    ("fear", "fear_try", "fear_truth"): FEARS,
    ("need_who", "need_short", "need_trouble", "need_help", "need_result"): NEEDS,
    ("skill", "skill_fail", "skill_win"): SKILLS,
    ("mistake", "owner_role"): MISTAKES,
    ("weather_bad", "weather_fun", "weather_end"): WEATHERS,
}

# ------------------------------------------------------------------------------ templates
# One string per template group. Each line is one beat; " | " separates alternative
# sentences for that beat, and a line starting with "| " adds more alternatives to the beat
# above. A beat starting with "~ " opens a new paragraph; a beat starting with "?" is
# used only half of the time.
OPENINGS = """Once upon a time, there was {hero_intro} who lived in {home}.
| Once upon a time, in {home}, there lived {hero_intro}. | There once was {hero_intro}. {He} lived in {home}.
| {Hero_intro} lived in {home}. | In {home}, there lived {hero_intro}.
| Once there was {hero_intro}. {His} home was {home}.
{Name} was {trait} and liked to {hobby}. | Every day, {name} liked to {hobby}.
| {Name} was a very {trait} {kind}. {His} favorite thing was to {hobby}.
| {His} favorite color was {colour}, and {he} loved to {hobby}. | More than anything, {name} loved to {hobby}."""
CLOSINGS = """?{Name} went to bed that night with a big smile. | And {name} felt {good_feeling} all day long.
| It was a day {name} would always remember. | The sun went down, and it had been a very good day."""

PLOTS = {
    "lost_and_found": """{When}, {name} could not find {his} {colour} {toy}.
| {When}, {name} took {his} {colour} {toy} to {place}. When it was time to go home, the {toy} was gone!
| {When}, {name} looked for {his} {colour} {toy}, but it was not in its usual place.
"Where is my {toy}?" {name} asked. {He} felt very {bad_feeling}.
| "Oh no! My {toy} is lost!" cried {name}. {His} eyes filled with tears.
| {Name} ran to {helper}. "{Address}, I lost my {toy}!" {he} said.
~ {Name} looked {spot1}. {He} looked {spot2}. But the {toy} was not there.
| {He} searched {spot1} and {spot2}, but {he} could not find it anywhere.
| {His} friend {friend} came to help. They looked {spot1} and {spot2}, but there was no {toy}.
{Helper} gave {him} a hug. "Let's look one more time, together," {helper_he} said.
| "Don't give up," said {his} friend {friend}. "Things are often in the last place you look."
| {Helper} smiled. "Think, {name}. Where did you play with it last?" {helper_he} asked.
Then {name} saw something {colour} {spot3}. It was the {toy}!
| At last, {name} found the {toy} {spot3}. {He} jumped up and down with joy.
| Suddenly, {his} friend {friend} shouted, "I see it!" The {toy} was {spot3}.
~ {Name} hugged {his} {toy} tight. "Thank you for helping me," {he} said. From then on, {he} always put {his} {toy} away.
| {Name} learned to take good care of {his} things. And the {colour} {toy} never got lost again.
| {Name} was so {good_feeling}. {He} knew that when you lose something, it helps to stay calm and ask for help.""",
    "sharing": """{When}, {name} got {a_colour_toy} from {helper}. {He} loved it very much.
| {When}, {name} took {his} new {colour} {toy} to {place}. It was {his} favorite thing in the world.
| {Name} had {a_colour_toy}. {He} did not want anyone else to touch it.
At {place}, {name} met {friend_intro}. "Can I play with your {toy}?" {friend} asked.
| Then {friend_intro} came by. {Friend_he} looked at the {toy} and asked, "May I have a turn, please?"
| {His} friend {friend} saw the {toy}. "That looks fun! Can I try?" {friend_he} asked.
"No! It is mine!" {name} said. {Friend} looked sad and walked away.
| {Name} held the {toy} close. "No, you can't," {he} said. {Friend}'s face became sad.
| "Go away. I want to play alone," said {name}. {Friend} sat down by {friend_him}self.
~ ?Soon, {name} did not feel happy anymore. Playing alone was not much fun.
| {Name} played with the {toy}, but {he} felt {bad_feeling} inside.
| {Helper} saw what happened. "How would you feel if {friend} did not share with you?" {helper_he} asked.
{Name} walked over to {friend}. "I am sorry. Let's play with it together," {he} said.
| {Name} ran after {friend}. "Wait! You can have a turn," {he} called.
| "{Friend}, do you want to share my {toy}?" asked {name}. {Friend} smiled a big smile.
They took turns and laughed all afternoon. Later, they even played {game} together.
| The two friends played with the {toy} until the sun went down.
| Together, they had more fun than {name} had ever had alone. {Name} even shared {his} {food} with {friend}.
~ {Name} learned that sharing makes playing more fun. From then on, {he} and {friend} were best friends.
| That day, {name} learned that a toy is more fun when you share it with a friend.
| "Sharing is caring," said {helper} with a smile. {Name} nodded. {He} knew it was true.""",
    "fear": """{Name} was afraid of {fear}. | {Name} had one big problem. {He} was scared of {fear}.
| Every time {name} thought about {fear}, {his} tummy felt funny.
{When}, {helper} said, "Today you can {fear_try_you}." "No, I am too scared!" {name} cried.
| "I don't like {fear}," {name} told {helper}. "It makes me shake."
| {Name} hid behind {helper}. "What if something bad happens?" {he} whispered.
~ {Helper} held {his} hand. "I am right here with you," {helper_he} said softly.
| {Helper} smiled. "Being brave does not mean you are not scared. It means you try anyway," {helper_he} said.
| {His} friend {friend} said, "I will do it with you. We can be brave together."
{Name} took a deep breath. Slowly, {he} began to {fear_try}.
| {Name} counted to three. Then {he} tried to {fear_try}.
| With a little shake in {his} knees, {name} decided to {fear_try}.
To {his} surprise, {fear_truth}. | Soon {name} saw that {fear_truth}. | It was not so bad after all! {Fear_truth}.
~ {Name} smiled a big smile. "I did it!" {he} shouted. {He} was not afraid anymore.
| {Name} felt very {good_feeling}. {He} learned that things are often less scary when you face them.
| From that day on, {name} was not scared of {fear}. {He} even helped other kids be brave too.""",
    "helping": """{When}, {name} was walking to {place} when {he} saw {need_who}.
| {When}, {name} heard a sad sound near {place}. It was {need_who}. | At {place}, {name} saw {need_who}.
"What is wrong?" {name} asked. {Need_short} {need_trouble}.
| {Need_short} {need_trouble}. "Oh dear," {name} whispered. "I will help."
| {Name} saw that {need_short} {need_trouble}. "I have to do something," {he} said.
~ {Name} ran to get {helper}. "{Address}, we have to help!" {he} said.
| "Don't worry," {name} said. "I know what to do." | {Name} thought and thought. Then {he} said, "I have an idea!"
?{Name} knew {he} had to be very gentle. | It was not easy, but {name} did not give up.
{Name} {need_help}. | With help from {helper}, {name} {need_help}. | Carefully, {name} {need_help}.
Soon, {need_result}. | After a while, {need_result}. | It worked! {Need_result}.
{Name} clapped {his} hands. "We did it!" {he} said. | {Helper} hugged {name}. "You have a kind heart," {helper_he} said.
| {Name} waved goodbye. "Take care!" {he} called.
~ {Name} felt warm and {good_feeling} inside. "Helping is the best feeling," {he} said.
| That night, {helper} tucked {name} into bed. "I am proud of you," {helper_he} said. "Kindness matters most."
| {Name} learned that even a small helper can do a big kindness.""",
    "learning": """{Name} wanted to learn to {skill}. {He} watched the big kids do it every day.
| {When}, {name} told {helper}, "I want to learn to {skill_my}."
| {Name} had a dream. {He} wanted to {skill} all by {him}self.
"Can you teach me?" {name} asked. "Of course," said {helper}. "Let's try together."
| {Helper} smiled. "Learning takes time, but you can do it," {helper_he} said.
| "I will help you," said {his} friend {friend}. "It is easy once you get it."
~ The first time {name} tried, {he} {skill_fail}. | {Name} tried, but {he} {skill_fail}. {He} felt {bad_feeling}.
| On the first try, {name} {skill_fail}. "I can't do it!" {he} cried.
"Try again," said {helper}. "Every time you try, you get a little better."
| {Name} wanted to give up. But then {he} remembered what {helper} always said: "Practice makes progress."
| {His} friend {friend} clapped {friend_his} hands. "Don't stop now! You are so close!" {friend_he} shouted.
?{Name} tried again the next day, and the day after that. | So {name} practiced every morning and every evening.
| {He} tried again and again, and each time {he} got a little better.
At last, {name} {skill_win}! | Then one day, {name} {skill_win}. | After many tries, {name} {skill_win}.
~ "I did it!" {name} shouted. {He} was so {good_feeling}. {He} learned that if you keep trying, you can do hard things.
| {Helper} gave {him} a big hug. "I knew you could do it," {helper_he} said. Practice had made it easy.
| {Name} smiled from ear to ear. Now {he} could {skill} whenever {he} wanted.""",
    "mistake": """{When}, {name} was running and jumping and not looking where {he} was going.
| {When}, {name} was playing {game} in the house, even though {he} knew {he} should not.
| {When}, {name} was in a big hurry to go and play.
Oops! {He} {mistake}. | Suddenly, {name} {mistake}. | Crash! {Name} {mistake}.
{Name} was scared. {He} hid behind the couch. "Maybe no one will know," {he} whispered.
| "Uh-oh," said {name}. {He} wanted to run away and hide.
| {Name} felt {bad_feeling}. "What did I do?" {he} asked in a small voice.
~ Soon, {owner} came in. "What happened here?" {owner_he} asked.
| Later, {owner} saw the mess. "Do you know who did this?" {owner_he} asked.
| {Owner} looked sad. "Oh no. Who did this?" {owner_he} asked.
{Name} took a deep breath. "It was me. I am sorry," {he} said.
| {Name} wanted to say "not me," but {he} knew that would be a lie. "I did it," {he} said quietly. "I am very sorry."
| Tears filled {name}'s eyes. "I did it by accident. I am sorry," {he} said.
{Owner} gave {him} a hug. "Thank you for telling the truth. I forgive you," {owner_he} said.
| {Owner} smiled. "Accidents happen. I am glad you were honest," {owner_he} said.
| "It's okay," said {owner}. "Let's make it better together."
~ {Name} felt light and happy again. {He} learned that telling the truth is always the right thing to do.
| Together, they cleaned up the mess. {Name} learned that saying sorry can make things better.
| From that day on, {name} was more careful. And {he} always told the truth, even when it was hard.""",
    "weather": """{Name} was very excited. Today {he} was going to have a picnic at {outdoors} with {helper}.
| {When}, {name} and {his} friend {friend} planned to play at {outdoors} all day.
| {Name} had a big plan. {He} wanted to go to {outdoors} and play {game}.
But when {name} looked out the window, {weather_bad}. | But then {weather_bad}.
| Just as they were ready to go, {weather_bad}.
"Now we can't go!" {name} cried. {He} felt {bad_feeling}.
| "It's not fair," said {name}, with a frown. "This day is ruined."
| {Name} pressed {his} nose to the window. "Will it ever stop?" {he} asked.
~ {Helper} smiled. "Every kind of day can be a fun day," {helper_he} said. "Let's see what we can do."
| "I have an idea," said {helper}. "Let's make this day special in a new way."
| {His} friend {friend} had an idea. "Come on! Let's have an adventure anyway!" {friend_he} said.
So {name} {weather_fun}. | Together, they {weather_fun}. | {Name} and {helper} {weather_fun}.
?It was so much fun that {name} laughed and laughed. | {Name} forgot all about {his} old plan.
Later, {weather_end}. "Hooray!" {name} shouted. | By the end of the day, {weather_end}.
~ {Name} learned that a change of plans can still lead to a happy day.
| That night, {name} said, "Today was the best day ever!" {He} learned that you can find fun in any weather.
| {Name} smiled. Even when things do not go as planned, there is always something fun to do.""",
    "trip": """{When}, {helper} said, "Today we are going to {outdoors}!" {Name} clapped {his} hands.
| {When}, {name} went on a trip to {outdoors} with {helper}.
| {Name} and {helper} packed a bag with {a_food} and some water. They were going to {outdoors}!
"What will we see there?" {name} asked. "Lots of things," said {helper} with a wink.
| On the way, {name} asked, "Are we there yet?" {Helper} laughed. "Almost," {helper_he} said.
| {Name} was so excited that {he} could not sit still. "Hurry, hurry!" {he} said.
~ When they got there, {name} saw {sight1}. Then {he} saw {sight2}!
| First, they saw {sight1}. Next, they found {sight2}.
| There was so much to see. There was {sight1}, and there was {sight2}.
Then the wind blew {his} hat away! "My hat!" {name} shouted. {Helper} ran and caught it just in time.
| Then {name} dropped {his} {food} in the dirt. "Oh no," {he} said. {Helper} shared {helper_his} snack with {him}.
| Then {name} could not see {helper}. "{Address}! Where are you?" {he} called. {Helper} was right behind {him}.
| Then {name} tripped and scraped {his} knee. "Ouch!" {he} cried. {Helper} gave {him} a gentle kiss and a bandage.
?After that, they sat under a big tree and ate {a_food}. | Later, they played {game} until they were tired.
| Before going home, {name} picked up a pretty {colour} stone to keep.
~ On the way home, {name} fell asleep with a smile. It had been a wonderful day.
| "Thank you for taking me, {address}," said {name}. "Can we come back again soon?"
| That night, {name} told {his} friend {friend} all about the trip. {He} could not wait to go on another adventure.""",
    "new_friend": """{When}, {name} saw {friend_intro} sitting all alone at {place}.
| At {place}, {name} noticed {friend_intro} who looked sad and lonely.
| {When}, {friend_intro} came to {place} for the very first time.
{Name} felt shy. {He} did not know what to say. | {Name} wanted to say hello, but {his} voice felt small.
| {Name} remembered how it felt to be new.
{Name} walked over. "Hi, I am {name}. Do you want to play?" {he} asked.
| {Name} took a deep breath. "Hello! What is your name?" {he} asked. "I am {friend}," said the {friend_kind}.
| "Would you like to play {game} with me?" asked {name}.
~ {Friend} smiled. "Yes, please!" {friend_he} said. | "I would love to," said {friend}. "I was feeling lonely."
| {Friend}'s face lit up. "Really? Thank you!" {friend_he} said.
They played {game} and laughed all day. | Together, they ran, jumped, and played {game}.
| {Name} showed {friend} {his} {colour} {toy}, and they played with it together.
"You are fun to play with!" said {friend}. | "This is the best day ever!" {friend} said with a laugh.
| "Can we play again tomorrow?" asked {friend}. "Yes!" said {name}.
?{Name} and {friend} found out they both loved to {hobby}.
| They shared {a_food} and talked about their favorite colors.
~ From that day on, {name} and {friend} were best friends. {Name} learned that a small hello can mean a lot.
| {Name} was glad {he} was brave enough to say hi. Now {he} had a new best friend.
| "See you tomorrow!" {friend} called. {Name} waved. Making a new friend was the best part of the day.""",
    "broken_toy": """{When}, {name} was playing with {his} {colour} {toy} at {place}.
| {Name} loved {his} {colour} {toy} more than anything.
| {When}, {name} and {his} friend {friend} were playing with {name}'s {colour} {toy}.
Suddenly, there was a loud snap! The {toy} was broken. | Then {name} dropped it, and the {toy} broke.
| Crack! The {toy} hit the ground and broke in two.
"My {toy}!" {name} cried. "Now it is ruined!"
| {Name} held the broken {toy} and began to cry. "It will never be the same," {he} said.
| "Oh no, what did I do?" {name} asked in a small voice.
~ {Helper} came over and looked at the {toy}. "Maybe we can fix it," {helper_he} said.
| {His} friend {friend} sat next to {him}. "Don't be sad. Let's try to fix it together," {friend_he} said.
| "Broken things can sometimes be fixed," said {helper} kindly.
They got some glue and tape. Slowly and carefully, they put the {toy} back together.
| {Helper} found {helper_his} little tool box. {Name} held the pieces while {helper_he} worked.
| They worked very hard. Piece by piece, the {toy} was fixed.
The {toy} had a small crack now, but it worked again. | It did not look brand new, but {name} loved it even more.
| When they were done, the {toy} looked almost like new.
~ "Thank you!" said {name}, giving {helper} a big hug. {He} learned that with patience, many things can be fixed.
| {Name} learned to be gentle with {his} toys. And {he} played with the {toy} for many more years.
| {Name} smiled. The crack made the {toy} special, because it reminded {him} of the day it was fixed.""",
}


def _parse_template_group(text):
    """Turn a template string into paragraphs; a paragraph is a list of beats (tuples of alternatives)."""
    paragraphs = [[]]
    for line in text.strip().splitlines():
        if line.startswith("| "):
            paragraphs[-1][-1] += tuple(line[2:].split(" | "))
            continue
        if line.startswith("~ "):
            paragraphs.append([])
            line = line[2:]
        paragraphs[-1].append(tuple(line.split(" | ")))
    return paragraphs


OPENING_BEATS = _parse_template_group(OPENINGS)[0]
CLOSING_BEATS = _parse_template_group(CLOSINGS)[0]
PLOT_PARAGRAPHS = {name: _parse_template_group(text) for name, text in PLOTS.items()}
PLOT_NAMES = tuple(sorted(PLOT_PARAGRAPHS))
SENTENCE_START = re.compile(r'(^|[.!?] +"?|\n|[,:] ")([a-z])')   # also the first word of a quote


# ------------------------------------------------------------------------------ story building
def with_article(phrase):
    """Put 'a' or 'an' in front of a noun phrase: 'an orange kite', 'a unicorn'."""
    first_word = phrase.split()[0].lower()
    vowel_sound = first_word[0] in "aeiou" and not first_word.startswith(("uni", "use", "one", "eu"))
    return ("an " if vowel_sound else "a ") + phrase


def _make_character(rng, taken_name=None):
    """Pick a child or an animal with a name (not taken_name), pronouns and an introduction."""
    gender = rng.choice(("he", "she"))
    if rng.random() < 0.25:
        kind, names, adjective = rng.choice(ANIMALS), PET_NAMES, rng.choice(ANIMAL_ADJECTIVES)
    else:
        kind = "boy" if gender == "he" else "girl"
        names = BOY_NAMES if gender == "he" else GIRL_NAMES
        adjective = rng.choice(TRAITS + ("little", "little", "young", ""))
    name = rng.choice(names)
    while name == taken_name:
        name = rng.choice(names)
    he, him, his = PRONOUNS[gender]
    intro = f"{with_article(f'{adjective} {kind}'.strip())} named {name}"
    return {"name": name, "kind": kind, "intro": intro, "he": he, "him": him, "his": his}


class _Slots(dict):
    """Template slots where a capitalised key ('{Name}', '{He}') capitalises the value of 'name', 'he'."""

    def __missing__(self, key):
        if not key[:1].isupper():
            raise KeyError(key)
        value = self[key[0].lower() + key[1:]]
        return value[0].upper() + value[1:]


def _story_slots(rng, plot_name):
    """Choose every word a story may need; return them as a dictionary for str.format_map."""
    hero = _make_character(rng)
    friend = _make_character(rng, taken_name=hero["name"])
    helper_noun, address, helper_gender = rng.choice(HELPERS)
    slots = _Slots({key: hero[key] for key in ("name", "kind", "he", "him", "his")})
    slots.update({"hero_intro": hero["intro"], "friend_intro": friend["intro"], "friend_kind": friend["kind"]})
    slots.update({f"friend_{key}": friend[key] for key in ("he", "him", "his")})
    slots.update(friend=friend["name"], helper=f"{hero['his']} {helper_noun}", address=address)
    slots.update(zip(("helper_he", "helper_him", "helper_his"), PRONOUNS[helper_gender]))
    for fields, rows in STORY_TABLES.items():
        slots.update(zip(fields, rng.choice(rows)))
    owner_is_helper = slots["owner_role"] == "helper"
    slots["owner"] = slots["helper"] if owner_is_helper else friend["name"]
    slots["owner_he"] = slots["helper_he"] if owner_is_helper else friend["he"]
    slots["owner_his"] = slots["owner"] + "'s"
    slots["skill_my"] = slots["skill"].replace("{his}", "my")          # for the hero's own words
    slots["fear_try_you"] = slots["fear_try"].replace("{his}", "your")  # for the helper's words
    slots["toy"] = rng.choice(BREAKABLE_TOYS if plot_name == "broken_toy" else TOYS)
    slots["colour"], slots["food"] = rng.choice(COLOURS), rng.choice(FOODS)
    slots["a_colour_toy"] = with_article(f"{slots['colour']} {slots['toy']}")
    slots["a_food"] = with_article(slots["food"])
    slots["a_animal"] = with_article(rng.choice([animal for animal in ANIMALS if animal != hero["kind"]]))
    slots["home"] = rng.choice(PERSON_HOMES if hero["kind"] in ("boy", "girl") else ANIMAL_HOMES)
    slots.update(zip(("spot1", "spot2", "spot3"), rng.sample(SPOTS, 3)))
    slots.update(zip(("sight1", "sight2"), rng.sample(SIGHTS, 2)))
    slots.update(trait=rng.choice(TRAITS), hobby=rng.choice(HOBBIES), place=rng.choice(PLACES),
                 outdoors=rng.choice(OUTDOOR_PLACES), game=rng.choice(GAMES), when=rng.choice(WHENS),
                 bad_feeling=rng.choice(BAD_FEELINGS), good_feeling=rng.choice(GOOD_FEELINGS))
    return slots


def _fill(template, slots):
    """Fill a template; a second pass fills slots that sit inside slot values ('{his} feet')."""
    text = template.format_map(slots)
    return text.format_map(slots) if "{" in text else text


def _render_paragraph(rng, beats, slots):
    """Pick one alternative per beat (skipping half of the optional '?' beats) and join them."""
    sentences = []
    for alternatives in beats:
        if alternatives[0].startswith("?") and rng.random() < 0.5:
            continue
        sentences.append(_fill(rng.choice(alternatives).lstrip("?"), slots))
    return " ".join(sentences)


def _make_story(rng):
    """Write one story: an opening, the beats of a randomly chosen plot shape, maybe a closing line."""
    plot_name = rng.choice(PLOT_NAMES)
    slots = _story_slots(rng, plot_name)
    paragraphs = [_render_paragraph(rng, beats, slots) for beats in PLOT_PARAGRAPHS[plot_name]]
    paragraphs[0] = _render_paragraph(rng, OPENING_BEATS, slots) + " " + paragraphs[0]
    paragraphs[-1] = (paragraphs[-1] + " " + _render_paragraph(rng, CLOSING_BEATS, slots)).strip()
    story = "\n".join(paragraphs)
    return SENTENCE_START.sub(lambda match: match.group(1) + match.group(2).upper(), story)


# ------------------------------------------------------------------------------ public API
def generate_stories(n: int, seed: int = 0) -> list[str]:
    """Return n TinyStories-style stories; the same seed always gives the same stories.

    Uses its own random.Random(seed), so the global random state is never touched.
    """
    if n < 0:
        raise ValueError(f"n must be zero or more, got {n}")
    rng = random.Random(seed)
    return [_make_story(rng) for _ in range(n)]


def _unique_stories(seed, min_chars, excluded=frozenset()):
    """Generate distinct stories, none of them in `excluded`, until they hold min_chars characters."""
    rng = random.Random(seed)
    stories, seen, total_chars = [], set(excluded), 0
    while total_chars < min_chars:
        story = _make_story(rng)
        if story not in seen:
            seen.add(story)
            stories.append(story)
            total_chars += len(story)
    return tuple(stories)


@lru_cache(maxsize=None)
def _cached_split(split):
    """Build one split (tuple, so the cached value cannot be changed by callers)."""
    if split == "train":
        return _unique_stories(TRAIN_SEED, TRAIN_CHARS)
    train = _cached_split("train")   # built once, shared with the train split
    return _unique_stories(VALIDATION_SEED, VALIDATION_CHARS, excluded=frozenset(train))


def offline_corpus(split: str = "train") -> list[str]:
    """Return the offline stand-in corpus: split is 'train', 'validation' or 'val'.

    'train' holds about 1.5 MB of text and 'validation' about 5% of that; no story is in
    both. The splits are built once and cached; every call returns a new list.
    """
    if split not in SPLIT_NAMES:
        raise ValueError(f"unknown split {split!r}; accepted names: {', '.join(SPLIT_NAMES)}")
    return list(_cached_split(SPLIT_NAMES[split]))
